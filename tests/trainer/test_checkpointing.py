"""What a checkpoint holds, callback state by key, and how problems with it are reported."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.models import Classifier, loader, trainer
from treadle.callbacks.model_checkpoint import ModelCheckpoint
from treadle.trainer.checkpointing import callback_state_key, resolve_path


class Counter:
    """A stateful callback counting batches."""

    def __init__(self, name: str | None = None) -> None:
        self.count = 0
        if name is not None:
            self.state_key = f"Counter[{name}]"

    def on_train_batch_end(self) -> None:
        self.count += 1

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = state["count"]


class Other(Counter):
    pass


def _fit_and_save(path: Path, callbacks: list[Any], **options: Any) -> Any:
    fitted = trainer(callbacks=callbacks, **options)
    fitted.fit(Classifier(), loader(n=32))
    fitted.save_checkpoint(path)
    return fitted


def test_checkpoint_contents(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    _fit_and_save(path, [Counter(), Counter("b")], max_epochs=2, log_every_n_steps=1)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["treadle_trainer"] == 1
    progress = checkpoint["progress"]
    assert progress["time_elapsed"] > 0
    assert progress == {
        "epoch": 2,
        "global_step": 8,
        "batches_done": 0,
        "time_elapsed": progress["time_elapsed"],
        "epoch_finished": False,
        "step_boundary_pending": False,
    }
    assert set(checkpoint["model"]) == set(Classifier().state_dict())
    assert set(checkpoint["optimizer"]) == {"state", "param_groups"}
    assert checkpoint["lr_schedulers"] == [] and checkpoint["precision"] == {}
    assert {"python", "torch"} <= set(checkpoint["rng"])
    assert checkpoint["callbacks"] == {"Counter": {"count": 8}, "Counter[b]": {"count": 8}}
    assert "train_loss" in checkpoint["callback_metrics"]


def test_state_key_defaults_to_the_qualified_class_name() -> None:
    assert callback_state_key(Counter()) == "Counter"
    assert callback_state_key(Counter("x")) == "Counter[x]"
    with pytest.raises(TypeError, match="state_key"):
        callback_state_key(type("Bad", (), {"state_key": 3})())


def test_two_stateful_callbacks_with_one_key_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"callbacks\[0\] and callbacks\[2\] both store .* 'Counter'"):
        trainer(callbacks=[Counter(), object(), Counter()])
    trainer(callbacks=[Counter(), Counter("second")])  # distinct keys are fine


def test_one_stateful_callback_listed_twice_says_so() -> None:
    counter = Counter()
    with pytest.raises(
        ValueError, match=r"callbacks\[0\] and callbacks\[1\] are the same Counter object, listed twice"
    ):
        trainer(callbacks=[counter, counter])


def test_resume_restores_callback_state_and_reports_mismatches(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    _fit_and_save(path, [Counter(), Counter("gone")])
    restored, new = Counter(), Other()
    with pytest.warns(UserWarning) as caught:
        trainer(callbacks=[restored, new], max_epochs=2).fit(Classifier(), loader(n=32), ckpt_path=path)
    messages = [str(w.message) for w in caught]
    assert any("no state for the callbacks ['Other']" in m for m in messages)
    assert any("callbacks this Trainer does not have: ['Counter[gone]']" in m for m in messages)
    assert restored.count == 8  # 4 restored + 4 of the second epoch
    assert new.count == 4


def test_last_checkpoint_path_and_missing_last(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    first = _fit_and_save(directory / "last.ckpt", [], checkpoint_dir=directory)
    assert first.checkpoint_dir == str(directory)
    resumed = trainer(checkpoint_dir=directory, max_epochs=2)
    resumed.fit(Classifier(), loader(n=32), ckpt_path="last")
    assert resumed.global_step == 8
    fresh = trainer(checkpoint_dir=tmp_path / "empty")
    with pytest.warns(UserWarning, match="no .*last.ckpt yet; training starts from scratch"):
        fresh.fit(Classifier(), loader(n=32), ckpt_path="last")
    assert fresh.global_step == 4


def test_not_a_trainer_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(Classifier().state_dict(), path)
    with pytest.raises(ValueError, match="not written by Trainer.save_checkpoint"):
        trainer().fit(Classifier(), loader(n=16), ckpt_path=path)
    with pytest.raises(FileNotFoundError):
        trainer().fit(Classifier(), loader(n=16), ckpt_path=tmp_path / "missing.ckpt")


def test_saving_mid_accumulation_warns(tmp_path: Path) -> None:
    class SaveEarly:
        def on_train_batch_end(self, trainer: Any, batch_idx: int) -> None:
            if batch_idx == 0:
                trainer.save_checkpoint(tmp_path / "early.ckpt")

    with pytest.warns(UserWarning, match="gradients of 1 accumulated batches"):
        trainer(grad_accum_steps=2, callbacks=[SaveEarly()]).fit(Classifier(), loader(n=32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer(callbacks=[SaveEarly()]).fit(Classifier(), loader(n=32))


def test_save_checkpoint_needs_a_fit() -> None:
    with pytest.raises(RuntimeError, match="during or after fit"):
        trainer().save_checkpoint("x.ckpt")


def test_last_is_looked_up_in_the_model_checkpoint_folders(tmp_path: Path) -> None:
    # Regression: "last" looked only in checkpoint_dir, so a run saving to ModelCheckpoint(dirpath=...)
    # started from scratch and then overwrote that folder's last.ckpt.
    callbacks = [
        ModelCheckpoint(dirpath=tmp_path / "ckpts"),
        ModelCheckpoint(tmp_path / "nolast", save_last=False),
    ]
    default = str(tmp_path / "checkpoints")
    with pytest.warns(UserWarning, match=r"no .*checkpoints/last.ckpt or .*ckpts/last.ckpt yet"):
        assert resolve_path("last", default, callbacks) is None
    ours = tmp_path / "ckpts" / "last.ckpt"
    ours.parent.mkdir()
    ours.write_bytes(b"")
    (tmp_path / "nolast").mkdir()
    (tmp_path / "nolast" / "last.ckpt").write_bytes(b"")  # that callback keeps no last.ckpt: not looked at
    assert resolve_path("last", default, callbacks) == str(ours)
    # Both folders hold one (e.g. a SIGTERM save in checkpoint_dir): the newest is the state reached last.
    sigterm = tmp_path / "checkpoints" / "last.ckpt"
    sigterm.parent.mkdir()
    sigterm.write_bytes(b"")
    os.utime(ours, (1, 1))
    assert resolve_path("last", default, callbacks) == str(sigterm)
    assert resolve_path(tmp_path / "x.ckpt", default, callbacks) == str(tmp_path / "x.ckpt")
