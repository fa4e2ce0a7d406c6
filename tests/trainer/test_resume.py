"""A run resumed from a checkpoint ends with weights bitwise equal to the uninterrupted run."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tests.trainer.models import Classifier, loader, make_data, trainer
from treadle.callbacks.early_stopping import EarlyStopping
from treadle.callbacks.model_checkpoint import ModelCheckpoint
from treadle.seed import seed_everything


class NoisyData(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Draws augmentation noise from the global torch and python RNGs while loading, as real pipelines do."""

    def __init__(self, n: int) -> None:
        self.data = make_data(n)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data[index]
        return x + 0.1 * torch.randn_like(x) * random.random(), y


def configure(model: nn.Module) -> Any:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 6))
    decay = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    return optimizer, [{"scheduler": warmup, "interval": "step"}, decay]


class SaveAndStop:
    """Saves a checkpoint once `when(trainer)` holds, then stops training: the 'interrupted' run."""

    def __init__(self, path: Path, when: Any, hook: str) -> None:
        self.path, self.when = path, when
        setattr(self, hook, self._maybe_save)

    def _maybe_save(self, trainer: Any) -> None:
        if not self.path.exists() and self.when(trainer):
            trainer.save_checkpoint(self.path)
            trainer.request_stop("simulated interruption")


def run(seed: int, callbacks: list[Any] = (), ckpt_path: Path | None = None, **options: Any) -> nn.Module:  # type: ignore[assignment]
    seed_everything(seed)
    model = Classifier(dropout=0.3, configure=configure)
    settings = {"max_epochs": 3, "grad_accum_steps": 2, "val_every_n_steps": 3, "log_every_n_steps": 1}
    settings.update(options)
    train = DataLoader(NoisyData(80), batch_size=8, shuffle=True)
    val = DataLoader(NoisyData(24), batch_size=8)
    trainer(callbacks=list(callbacks), **settings).fit(model, train, val, ckpt_path=ckpt_path)
    return model


def assert_bitwise_equal(a: nn.Module, b: nn.Module) -> None:
    for (name, left), (_, right) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(left, right), f"{name} differs"


@pytest.mark.parametrize(
    ("hook", "when"),
    [
        # Mid-epoch: epoch 1 has 5 optimizer steps of 2 batches; step 7 is after batch 4 of epoch 1.
        pytest.param(
            "on_train_batch_end", lambda t: t.global_step == 7 and t.batch_idx % 2 == 1, id="mid-epoch"
        ),
        # After the epoch's last batch, inside its validation: resumes at the end of epoch 0.
        pytest.param(
            "on_validation_end",
            lambda t: t.progress.batches_done == t.num_training_batches and t.current_epoch == 0,
            id="epoch-end",
        ),
        # In on_train_epoch_end the epoch is finished (validated, schedulers stepped): resumes with epoch 1.
        pytest.param("on_train_epoch_end", lambda t: t.current_epoch == 0, id="train-epoch-end"),
        # After the epoch ended (schedulers stepped, counter advanced): resumes at the start of epoch 2.
        pytest.param("on_train_epoch_start", lambda t: t.current_epoch == 2, id="epoch-start"),
    ],
)
def test_resumed_run_ends_bitwise_equal_to_uninterrupted_run(tmp_path: Path, hook: str, when: Any) -> None:
    uninterrupted = run(seed=0)
    path = tmp_path / "interrupted.ckpt"
    run(seed=0, callbacks=[SaveAndStop(path, when, hook)])
    assert path.exists()
    resumed = run(seed=1234, ckpt_path=path)  # a different init and RNG state: the checkpoint must fix both
    assert_bitwise_equal(uninterrupted, resumed)


def test_resume_restores_progress_and_metrics(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    run(seed=0, callbacks=[SaveAndStop(path, lambda t: t.global_step == 7, "on_train_batch_end")])
    seen = {}

    class Peek:
        def on_train_start(self, trainer: Any) -> None:
            seen.update(
                step=trainer.global_step, epoch=trainer.current_epoch, done=trainer.progress.batches_done
            )
            seen["metrics"] = dict(trainer.callback_metrics)

    run(seed=0, callbacks=[Peek()], ckpt_path=path)
    assert (seen["step"], seen["epoch"], seen["done"]) == (7, 1, 4)

    path = tmp_path / "b.ckpt"
    run(seed=0, callbacks=[SaveAndStop(path, lambda t: t.current_epoch == 0, "on_train_epoch_end")])
    run(seed=0, callbacks=[Peek()], ckpt_path=path)
    assert (seen["step"], seen["epoch"], seen["done"]) == (5, 1, 0)
    assert "val_loss" in seen["metrics"] and "train_loss" in seen["metrics"]


def test_validation_does_not_change_trained_weights() -> None:
    # Validation restores the RNG it found, so its frequency cannot change what training draws.
    often = run(seed=0, val_every_n_steps=1)
    never = run(seed=0, val_every_n_steps=None, val_every_n_epochs=None)
    assert_bitwise_equal(often, never)


def test_a_checkpoint_holds_the_state_of_callbacks_listed_after_it(tmp_path: Path) -> None:
    # Regression: ModelCheckpoint saved at epoch end before EarlyStopping, listed after it, had counted that
    # epoch, so the resumed run stopped one epoch later than the uninterrupted one.
    def fit(folder: str, max_epochs: int, ckpt_path: Path | None = None) -> Any:
        patience = EarlyStopping("train_loss", patience=2, check_on_train_epoch_end=True, verbose=False)
        torch.manual_seed(0)
        run = trainer(
            max_epochs=max_epochs,
            log_every_n_steps=1,
            callbacks=[ModelCheckpoint(dirpath=tmp_path / folder), patience],
        )
        run.fit(Classifier(lr=0.0), loader(), ckpt_path=ckpt_path)  # lr 0: the loss never improves
        return run

    uninterrupted = fit("whole", 10)
    fit("parts", 2)
    resumed = fit("parts", 10, ckpt_path=tmp_path / "parts" / "last.ckpt")
    assert resumed.current_epoch == uninterrupted.current_epoch == 3


class CountBatches:
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self) -> None:
        self.batches += 1


def test_last_resumes_from_a_model_checkpoint_folder(tmp_path: Path) -> None:
    def fit(max_epochs: int, ckpt_path: str | None = None) -> int:
        counter = CountBatches()
        run = trainer(
            max_epochs=max_epochs,
            checkpoint_dir=str(tmp_path / "default"),
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "mine"), counter],
        )
        run.fit(Classifier(), loader(), ckpt_path=ckpt_path)
        return counter.batches

    assert fit(2) == 16
    assert fit(3, ckpt_path="last") == 8  # the third epoch only, resumed from mine/last.ckpt


def plateau_on_val_loss(model: nn.Module) -> Any:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=1, factor=0.5, threshold=0.0)
    scheduler = {"scheduler": plateau, "interval": "step", "monitor": "val_loss", "strict": False}
    return {"optimizer": optimizer, "lr_scheduler": scheduler}


@pytest.mark.filterwarnings(
    "ignore:Scheduler ReduceLROnPlateau monitors 'val_loss', which has not been logged"
)
def test_a_step_checkpoint_resumes_with_that_steps_validation(tmp_path: Path) -> None:
    # Regression: ModelCheckpoint(every_n_steps=3) saves in on_train_batch_end, before the validation of
    # val_every_n_steps=3; the resumed run skipped that validation, so the plateau scheduler diverged.
    def fit(max_steps: int, folder: str, ckpt_path: Path | None = None) -> tuple[nn.Module, Any]:
        seed_everything(0)
        model = Classifier(configure=plateau_on_val_loss)
        run = trainer(
            max_epochs=-1,
            max_steps=max_steps,
            val_every_n_steps=3,
            callbacks=[ModelCheckpoint(dirpath=tmp_path / folder, every_n_steps=3)],
        )
        run.fit(model, loader(shuffle=True), loader(n=16), ckpt_path=ckpt_path)
        return model, run

    whole, whole_run = fit(12, "whole")
    fit(6, "parts")
    resumed, resumed_run = fit(12, "parts", ckpt_path=tmp_path / "parts" / "last.ckpt")
    assert resumed_run.optimizers[0].param_groups[0]["lr"] == whole_run.optimizers[0].param_groups[0]["lr"]
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def _checkpoint_after_one_epoch(tmp_path: Path, model: nn.Module | None = None) -> Path:
    fitted = trainer(max_epochs=1)
    fitted.fit(model or Classifier(configure=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)),
               loader())  # fmt: skip
    path = tmp_path / "one.ckpt"
    fitted.save_checkpoint(path)
    return path


def test_resume_with_another_optimizer_names_the_file_and_what_differs(tmp_path: Path) -> None:
    path = _checkpoint_after_one_epoch(tmp_path)
    adam = Classifier(configure=lambda m: torch.optim.Adam(m.parameters()))
    with pytest.raises(
        ValueError, match=r"one.ckpt' was written by a different optimizer than this Adam.*momentum"
    ):
        trainer(max_epochs=2).fit(adam, loader(), ckpt_path=path)
    two_groups = Classifier(
        configure=lambda m: torch.optim.SGD(
            [{"params": m.net[0].parameters()}, {"params": m.net[3].parameters()}], lr=0.1, momentum=0.9
        )
    )
    with pytest.raises(
        ValueError, match=r"one.ckpt' has an optimizer with 1 parameter group\(s\); this SGD has 2"
    ):
        trainer(max_epochs=2).fit(two_groups, loader(), ckpt_path=path)


def test_resume_with_another_model_shape_names_the_file(tmp_path: Path) -> None:
    path = _checkpoint_after_one_epoch(tmp_path)
    wider = Classifier(configure=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    wider.net[0] = nn.Linear(4, 32)
    wider.net[3] = nn.Linear(32, 2)
    with pytest.raises(RuntimeError, match="size mismatch") as info:
        trainer(max_epochs=2).fit(wider, loader(), ckpt_path=path)
    assert any("one.ckpt" in note for note in info.value.__notes__)


def test_resume_with_a_shorter_loader_or_no_rng_state_warns(tmp_path: Path) -> None:
    mid = tmp_path / "mid.ckpt"
    run(
        seed=0, callbacks=[SaveAndStop(mid, lambda t: t.global_step == 7, "on_train_batch_end")]
    )  # batch 4 of 8
    model = Classifier(configure=configure)
    with pytest.warns(UserWarning, match=r"Resuming epoch 1 after batch 4, but the training loader has 2"):
        trainer(max_epochs=2).fit(model, loader(n=16), ckpt_path=mid)
    checkpoint = torch.load(mid, weights_only=True)
    checkpoint["rng"] = {}
    torch.save(checkpoint, tmp_path / "no_rng.ckpt")
    with pytest.warns(UserWarning, match="holds no random-number-generator state"):
        trainer(max_epochs=2).fit(
            Classifier(configure=configure), loader(), ckpt_path=tmp_path / "no_rng.ckpt"
        )
