from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.callbacks.tiny_trainer import TinyRegression, fit_tiny, loaders, trainer_class
from treadle import Fabric
from treadle.callbacks.model_checkpoint import ModelCheckpoint


def fabric_epochs(checkpoint: ModelCheckpoint, val_losses: list[float]) -> tuple[Fabric, nn.Module]:
    """A Fabric-only loop: one optimizer step per 'epoch', validation values given."""
    fabric = Fabric(accelerator="cpu", callbacks=[checkpoint])
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    state = {"model": model, "optimizer": optimizer, "checkpoint_callback": checkpoint}
    for epoch, val_loss in enumerate(val_losses):
        fabric.backward(model(torch.ones(1, 2)).sum())
        optimizer.step()
        optimizer.zero_grad()
        fabric.call(
            "on_train_epoch_end",
            fabric=fabric,
            state=state,
            epoch=epoch,
            step=epoch + 1,
            metrics={"val_loss": torch.tensor(val_loss)},
        )
    return fabric, model


def names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir() if not path.name.startswith(".")}  # ranked list: hidden


def test_top_k_by_monitor_deletes_displaced_files(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(
        tmp_path, filename="{epoch}-{val_loss:.2f}", monitor="val_loss", save_top_k=2
    )
    fabric_epochs(checkpoint, [0.5, 0.4, 0.6, 0.3, 0.45])
    assert names(tmp_path) == {"1-0.40.ckpt", "3-0.30.ckpt", "last.ckpt"}
    assert checkpoint.best_model_path == str(tmp_path / "3-0.30.ckpt")
    assert checkpoint.best_model_score == pytest.approx(0.3)
    assert list(checkpoint.best_k_models) == [str(tmp_path / "3-0.30.ckpt"), str(tmp_path / "1-0.40.ckpt")]


def test_last_ckpt_is_the_newest_state_and_hard_linked(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(tmp_path, monitor="val_loss", save_top_k=1)
    _, model = fabric_epochs(checkpoint, [0.5, 0.4, 0.6])
    last = tmp_path / "last.ckpt"
    # Epoch 2 (0.6) is not in the top 1, so last.ckpt was written on its own, with the final weights.
    loaded = torch.load(last, weights_only=True)
    assert torch.equal(loaded["model"]["weight"], model.module.weight.detach())
    assert loaded["checkpoint_callback"]["kept"] == [
        [str(tmp_path / "epoch=1-step=2.ckpt"), pytest.approx(0.4)]
    ]
    fabric_epochs(ModelCheckpoint(tmp_path / "b", monitor="val_loss"), [0.5, 0.4])
    best = tmp_path / "b" / "epoch=1-step=2.ckpt"
    assert os.path.samefile(best, tmp_path / "b" / "last.ckpt")


def test_without_monitor_keeps_the_most_recent(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(tmp_path, save_top_k=2, save_last=False)
    fabric_epochs(checkpoint, [0.0] * 4)
    assert names(tmp_path) == {"epoch=2-step=3.ckpt", "epoch=3-step=4.ckpt"}
    assert checkpoint.best_model_path == str(tmp_path / "epoch=3-step=4.ckpt")
    assert checkpoint.best_model_score is None


def test_save_top_k_zero_and_minus_one(tmp_path: Path) -> None:
    fabric_epochs(ModelCheckpoint(tmp_path / "zero", save_top_k=0), [0.0] * 3)
    assert names(tmp_path / "zero") == {"last.ckpt"}
    fabric_epochs(ModelCheckpoint(tmp_path / "all", save_top_k=-1, monitor="val_loss"), [0.3, 0.2, 0.1])
    assert len(names(tmp_path / "all")) == 4


def test_every_n_epochs(tmp_path: Path) -> None:
    fabric_epochs(ModelCheckpoint(tmp_path, save_top_k=-1, every_n_epochs=2, save_last=False), [0.0] * 5)
    assert names(tmp_path) == {"epoch=1-step=2.ckpt", "epoch=3-step=4.ckpt"}


def test_state_round_trip_keeps_ranking_across_resume(tmp_path: Path) -> None:
    first = ModelCheckpoint(tmp_path, filename="{epoch}", monitor="val_loss", save_top_k=2)
    fabric_epochs(first, [0.5, 0.4])
    resumed = ModelCheckpoint(tmp_path, filename="{epoch}", monitor="val_loss", save_top_k=2)
    resumed.load_state_dict(torch.load(tmp_path / "last.ckpt", weights_only=True)["checkpoint_callback"])
    assert resumed.best_model_score == pytest.approx(0.4)
    fabric, model = fabric_epochs(resumed, [])
    state = {"model": model, "checkpoint_callback": resumed}
    resumed.on_train_epoch_end(fabric=fabric, state=state, epoch=2, step=3, metrics={"val_loss": 0.3})
    # 0.5 (epoch 0, saved before the resume) was displaced and deleted by the resumed run.
    assert names(tmp_path) == {"1.ckpt", "2.ckpt", "last.ckpt"}


def test_resume_into_another_folder_starts_afresh(tmp_path: Path) -> None:
    first = ModelCheckpoint(tmp_path / "a", monitor="val_loss")
    fabric, model = fabric_epochs(first, [0.5])
    moved = ModelCheckpoint(tmp_path / "b", monitor="val_loss")
    moved.load_state_dict(first.state_dict())
    with pytest.warns(UserWarning, match="ranking starts afresh"):
        moved.on_train_epoch_end(
            fabric=fabric, state={"model": model}, epoch=1, step=2, metrics={"val_loss": 0.9}
        )
    assert (tmp_path / "a" / "epoch=0-step=1.ckpt").exists()
    assert moved.best_model_score == pytest.approx(0.9)


def test_missing_monitor_and_bad_template_errors(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"found no value for 'acc' at step 1 \(available: val_loss\)"):
        fabric_epochs(ModelCheckpoint(tmp_path, monitor="acc"), [0.5])
    with pytest.raises(ValueError, match=r"could not be filled in .*'acc'"):
        fabric_epochs(ModelCheckpoint(tmp_path, filename="{acc}"), [0.5])


def test_fabric_loop_needs_dirpath_and_state(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dirpath=None\) only has a default inside the Trainer"):
        ModelCheckpoint().on_train_epoch_end(fabric=object(), state={})
    with pytest.raises(RuntimeError, match="needs `fabric=` and `state=`"):
        ModelCheckpoint(tmp_path).on_train_epoch_end()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"save_top_k": -2}, "save_top_k=-2"),
        ({"mode": "low"}, "mode='low'"),
        ({"every_n_steps": -1}, "every_n_steps=-1"),
        ({"filename": "a/b"}, "not a path"),
        ({"monitor": ""}, "monitor=''"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelCheckpoint(**kwargs)


def test_trainer_top_k_and_resume_from_last(tmp_path: Path) -> None:
    val_losses: list[float] = []

    class Spy:
        def on_validation_end(self, trainer: Any) -> None:
            val_losses.append(trainer.callback_metrics["val_loss"])

    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=1, filename="{epoch}-{val_loss:.4f}")
    fit_tiny(callbacks=[Spy(), checkpoint], checkpoint_dir=tmp_path, max_epochs=3)
    files = names(tmp_path)
    assert "last.ckpt" in files and len(files) == 2
    best_epoch = min(range(3), key=lambda epoch: val_losses[epoch])
    assert checkpoint.best_model_score == pytest.approx(min(val_losses))
    best = checkpoint.best_model_path
    assert best == os.path.join(str(tmp_path), f"{best_epoch}-{min(val_losses):.4f}.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["callbacks"]["ModelCheckpoint"]["kept"][0][0] == best
    # Resume from last.ckpt with a fresh callback: its ranking comes back from the checkpoint.
    Trainer = trainer_class()
    again = ModelCheckpoint(monitor="val_loss", save_top_k=1, filename="{epoch}-{val_loss:.4f}")
    resumed = Trainer(
        accelerator="cpu", max_epochs=4, enable_progress_bar=False, callbacks=[again], checkpoint_dir=tmp_path
    )
    train, val = loaders()
    resumed.fit(TinyRegression(), train, val, ckpt_path="last")
    assert resumed.current_epoch == 4
    assert len(names(tmp_path)) == 2  # the best file and last.ckpt; the displaced one was deleted


def test_trainer_every_n_steps(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(every_n_steps=3, save_top_k=-1, save_last=False)
    fit_tiny(callbacks=[checkpoint], checkpoint_dir=tmp_path, max_epochs=2)  # 8 steps
    assert names(tmp_path) == {"epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"}


def test_trainer_stopped_mid_epoch_saves_no_ranked_file_but_last(tmp_path: Path) -> None:
    # Regression: max_steps stopped the first epoch before validation ever ran, and the epoch-end save
    # raised "found no value for 'val_loss'".
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=1)
    trainer = fit_tiny(callbacks=[checkpoint], checkpoint_dir=tmp_path, max_steps=2)  # 4 batches/epoch
    assert trainer.global_step == 2 and not trainer.epoch_finished
    assert names(tmp_path) == {"last.ckpt"} and checkpoint.best_k_models == {}
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["progress"]["batches_done"] == 2 and not saved["progress"]["epoch_finished"]


def test_trainer_unfinished_epoch_is_not_ranked_by_a_stale_score(tmp_path: Path) -> None:
    # Regression: the epoch stopped by max_steps was ranked by the previous epoch's val_loss.
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=3)
    finished: list[bool] = []

    class Spy:
        def on_train_epoch_end(self, trainer: Any) -> None:
            finished.append(trainer.epoch_finished)

    fit_tiny(callbacks=[Spy(), checkpoint], checkpoint_dir=tmp_path, max_steps=6)
    assert finished == [True, False]
    assert list(checkpoint.best_k_models) == [os.path.join(str(tmp_path), "epoch=0-step=4.ckpt")]
    assert names(tmp_path) == {"epoch=0-step=4.ckpt", "last.ckpt"}
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["progress"]["global_step"] == 6


@pytest.mark.parametrize("flag", ["save_last", "verbose"])
def test_flags_must_be_bools(flag: str) -> None:
    with pytest.raises(TypeError, match=rf"ModelCheckpoint\({flag}='no'\) must be True or False"):
        ModelCheckpoint(**{flag: "no"})


def test_a_schedule_that_never_saves_is_an_error() -> None:
    # Regression: every_n_steps=0 with every_n_epochs=0 was accepted and never saved anything.
    with pytest.raises(ValueError, match=r"every_n_steps=0, every_n_epochs=0\) would never save"):
        ModelCheckpoint(every_n_steps=0, every_n_epochs=0)
    with pytest.raises(ValueError, match="would never save"):
        ModelCheckpoint(every_n_epochs=0)


@pytest.mark.filterwarnings("ignore:ModelCheckpoint.*no longer exist:UserWarning")
def test_resume_into_another_default_folder_leaves_the_earlier_run_alone(tmp_path: Path) -> None:
    # Regression: with the default folder the state recorded dirpath=None, so a run resumed into another
    # checkpoint_dir kept ranking the first run's files and deleted them, the resumed file included.
    fit_tiny(callbacks=[ModelCheckpoint(save_top_k=2)], checkpoint_dir=tmp_path / "run1", max_epochs=3)
    before = names(tmp_path / "run1")
    assert before == {"epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt", "last.ckpt"}
    Trainer = trainer_class()
    resumed = Trainer(
        accelerator="cpu",
        max_epochs=5,
        enable_progress_bar=False,
        callbacks=[ModelCheckpoint(save_top_k=2)],
        checkpoint_dir=tmp_path / "run2",
    )
    train, val = loaders()
    with pytest.warns(UserWarning, match="ranking starts afresh"):
        resumed.fit(TinyRegression(), train, val, ckpt_path=tmp_path / "run1" / "epoch=1-step=8.ckpt")
    assert names(tmp_path / "run1") == before
    assert names(tmp_path / "run2") == {"epoch=3-step=16.ckpt", "epoch=4-step=20.ckpt", "last.ckpt"}
    saved = torch.load(tmp_path / "run2" / "last.ckpt", weights_only=True)
    assert saved["callbacks"]["ModelCheckpoint"]["dirpath"] == str(tmp_path / "run2")


def test_a_state_without_a_folder_is_placed_by_its_files(tmp_path: Path) -> None:
    # Checkpoints written before the folder was recorded: the kept files tell where that run saved.
    first = ModelCheckpoint(tmp_path / "a", save_top_k=1)
    fabric, model = fabric_epochs(first, [0.0])
    old_state = {**first.state_dict(), "dirpath": None}
    moved = ModelCheckpoint(tmp_path / "b", save_top_k=1)
    moved.load_state_dict(old_state)
    with pytest.warns(UserWarning, match="ranking starts afresh"):
        moved.on_train_epoch_end(fabric=fabric, state={"model": model}, epoch=1, step=2)
    assert names(tmp_path / "a") == {"epoch=0-step=1.ckpt", "last.ckpt"}


def test_repeated_names_get_version_suffixes(tmp_path: Path) -> None:
    # Regression: "{epoch}" with step saves wrote every save of an epoch to one file, so save_top_k=-1 kept
    # two files out of four.
    checkpoint = ModelCheckpoint(filename="{epoch}", every_n_steps=2, save_top_k=-1, save_last=False)
    fit_tiny(callbacks=[checkpoint], checkpoint_dir=tmp_path, max_epochs=2)  # 8 steps, 4 saves
    assert names(tmp_path) == {"0.ckpt", "0-v1.ckpt", "1.ckpt", "1-v1.ckpt"}
    assert len(checkpoint.best_k_models) == 4


def test_a_worse_checkpoint_with_a_taken_name_does_not_replace_the_best(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(
        tmp_path, filename="best", monitor="val_loss", save_top_k=1, every_n_steps=1, save_last=False
    )
    fabric = Fabric(accelerator="cpu")
    for step, loss in [(1, 0.1), (2, 0.9)]:
        state = {"loss": loss}
        checkpoint.on_train_batch_end(fabric=fabric, state=state, metrics={"val_loss": loss}, step=step)
    assert checkpoint.best_model_path == str(tmp_path / "best.ckpt")
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["loss"] == 0.1
    # A better one takes a new name and displaces the old; a file of another run is never overwritten.
    (tmp_path / "mine.pt").write_bytes(b"another run")
    other = ModelCheckpoint(tmp_path, filename="mine.pt", every_n_steps=1, save_last=False)
    other.on_train_batch_end(fabric=fabric, state={"loss": 0.5}, step=1)
    assert other.best_model_path == str(tmp_path / "mine-v1.pt")
    assert (tmp_path / "mine.pt").read_bytes() == b"another run"


@pytest.mark.parametrize(("schedule", "max_epochs"), [({"every_n_epochs": 2}, 3), ({"every_n_steps": 3}, 1)])
def test_last_ckpt_holds_the_final_state_whatever_the_schedule(
    tmp_path: Path, schedule: dict[str, int], max_epochs: int
) -> None:
    # Regression: last.ckpt was written only with a scheduled save, so it lagged behind a normal finish.
    trainer = fit_tiny(
        callbacks=[ModelCheckpoint(**schedule)], checkpoint_dir=tmp_path, max_epochs=max_epochs
    )
    progress = torch.load(tmp_path / "last.ckpt", weights_only=True)["progress"]
    assert progress["global_step"] == trainer.global_step == 4 * max_epochs
    assert progress["epoch_finished"]


def test_fabric_loop_step_count_survives_resume(tmp_path: Path) -> None:
    # Regression: the count of a loop that passes no step= restarted at 0 after a resume.
    def run(resume: bool) -> ModelCheckpoint:
        checkpoint = ModelCheckpoint(tmp_path, every_n_steps=5, save_top_k=1)
        fabric = Fabric(accelerator="cpu", callbacks=[checkpoint])
        state: dict[str, Any] = {"model": nn.Linear(2, 1), "checkpoint": checkpoint, "batches": 0}
        if resume:
            fabric.load(tmp_path / "last.ckpt", state)
        for _ in range(10):
            state["batches"] += 1
            fabric.call("on_train_batch_end", fabric=fabric, state=state)
        return checkpoint

    run(resume=False)
    resumed = run(resume=True)
    assert resumed.best_model_path == str(tmp_path / "epoch=0-step=20.ckpt")
    assert names(tmp_path) == {"epoch=0-step=20.ckpt", "last.ckpt"}
    # A state saved before the count was recorded continues from its last saved step.
    older = {key: value for key, value in resumed.state_dict().items() if key != "own_step"}
    fresh = ModelCheckpoint(tmp_path, every_n_steps=5)
    fresh.load_state_dict(older)
    assert fresh.state_dict()["own_step"] == 20


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tests.trainer.models import Classifier, loader, trainer
from treadle.callbacks import model_checkpoint
from treadle.callbacks.model_checkpoint import ModelCheckpoint

folder, where, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = []
if where != "none":
    original = getattr(model_checkpoint, where) if where == "atomic_link" else os.remove

    def die(*args):
        calls.append(args)
        if len(calls) == (3 if where == "atomic_link" else 1):
            os.kill(os.getpid(), signal.SIGKILL)  # the kill lands between two steps of one save
        return original(*args)

    if where == "atomic_link":
        model_checkpoint.atomic_link = die
    else:
        os.remove = die
callback = ModelCheckpoint(dirpath=folder, monitor="val_loss", save_top_k=2, filename="{{epoch}}")
resume = os.path.join(folder, "last.ckpt")
trainer(max_epochs=epochs, callbacks=[callback]).fit(
    Classifier(lr=0.05), loader(), loader(seed=1), ckpt_path=resume if os.path.exists(resume) else None
)
"""


@pytest.mark.parametrize("where", ["remove", "atomic_link"])
def test_top_k_holds_after_a_kill_between_writing_and_deleting(tmp_path: Path, where: str) -> None:
    import signal
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])
    code = _KILLED_RUN.format(root=root)
    killed = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), where, "6"], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ranked_before = names(tmp_path) - {"last.ckpt"}
    assert len(ranked_before) == 3  # the kill left one file too many
    resumed = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), "none", "6"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert len(names(tmp_path) - {"last.ckpt"}) == 2
