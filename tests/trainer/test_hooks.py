"""The order of hooks in fit and validate is the table in docs/trainer.md, and their arguments are as listed."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.trainer.models import Classifier, loader, trainer
from treadle.callbacks import KNOWN_HOOKS, TRAINER_HOOKS
from treadle.callbacks.early_stopping import EarlyStopping


def _recorder(log: list[tuple[str, str, dict[str, Any]]], label: str) -> Any:
    def make(name: str) -> Any:
        def hook(self: Any, **kwargs: Any) -> None:
            log.append((label, name, kwargs))

        return hook

    return type("Recorder", (), {name: make(name) for name in KNOWN_HOOKS})()


class HookedModel(Classifier):
    def __init__(self, log: list[tuple[str, str, dict[str, Any]]]) -> None:
        super().__init__()
        self.log = log

    def on_train_epoch_start(self, trainer: Any) -> None:
        self.log.append(("model", "on_train_epoch_start", {"trainer": trainer}))

    def on_validation_end(self) -> None:
        self.log.append(("model", "on_validation_end", {}))


FIT_ORDER = [
    "on_after_setup",
    "on_fit_start",
    "on_train_start",
    "on_train_epoch_start",
    *[
        *["on_train_batch_start", "on_before_backward", "on_after_backward"],
        *["on_before_optimizer_step", "on_after_optimizer_step", "on_before_zero_grad", "on_train_batch_end"],
    ]
    * 2,
    "on_validation_start",
    "on_validation_epoch_start",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_validation_epoch_end",
    "on_validation_end",
    "on_train_epoch_end",
    "on_train_end",
    "on_fit_end",
]


def test_fit_fires_hooks_in_documented_order_with_their_arguments() -> None:
    log: list[tuple[str, str, dict[str, Any]]] = []
    recorder = _recorder(log, "callback")
    model = HookedModel(log)
    fit_trainer = trainer(callbacks=[recorder], limit_train_batches=2, limit_val_batches=1)
    fit_trainer.fit(model, loader(), loader())

    assert [name for who, name, _ in log if who == "callback"] == FIT_ORDER
    # The model's hooks run right after the callbacks' for the same event.
    names = [(who, name) for who, name, _ in log]
    for hook in ("on_train_epoch_start", "on_validation_end"):
        position = names.index(("model", hook))
        assert names[position - 1] == ("callback", hook)

    by_hook: dict[str, dict[str, Any]] = {}
    for who, name, kwargs in log:
        if who == "callback":
            by_hook.setdefault(name, kwargs)
    expected_arguments = {
        "on_train_batch_start": {"batch", "batch_idx"},
        "on_before_zero_grad": {"optimizer"},
        "on_train_batch_end": {"loss", "output", "batch", "batch_idx"},
        "on_validation_batch_start": {"batch", "batch_idx"},
        "on_validation_batch_end": {"output", "batch", "batch_idx"},
        "on_before_backward": {"loss"},
        "on_before_optimizer_step": {"optimizer"},
    }
    for name in FIT_ORDER:
        received = set(by_hook[name])
        if name in TRAINER_HOOKS and name not in (
            "on_before_backward",
            "on_after_backward",
            "on_before_optimizer_step",
        ):
            assert {"trainer", "fabric"} <= received, name
            assert by_hook[name]["trainer"] is fit_trainer
            assert by_hook[name]["fabric"] is fit_trainer.fabric
        assert expected_arguments.get(name, set()) <= received, name
    assert by_hook["on_train_batch_end"]["batch_idx"] == 0
    assert isinstance(by_hook["on_train_batch_end"]["loss"], torch.Tensor)
    assert not by_hook["on_train_batch_end"]["loss"].requires_grad
    # The model is a callback only while fit runs.
    assert model not in fit_trainer.fabric.callbacks


def test_validate_fires_only_validation_hooks() -> None:
    log: list[tuple[str, str, dict[str, Any]]] = []
    validate_trainer = trainer(callbacks=[_recorder(log, "callback")])
    metrics = validate_trainer.validate(Classifier(), loader(n=16))
    names = [name for _, name, _ in log]
    assert names == [
        "on_after_setup",
        "on_validation_start",
        "on_validation_epoch_start",
        *["on_validation_batch_start", "on_validation_batch_end"] * 2,
        "on_validation_epoch_end",
        "on_validation_end",
    ]
    assert set(metrics) == {"val_loss", "val_acc"}
    assert validate_trainer.callback_metrics["val_acc"] == pytest.approx(metrics["val_acc"])


def test_checkpoint_hooks_see_and_may_edit_the_checkpoint(tmp_path: Any) -> None:
    class AddsEntry:
        loaded: dict[str, Any] | None = None

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["note"] = "hello"

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self.loaded = checkpoint

    path = tmp_path / "a.ckpt"
    first = trainer(callbacks=[AddsEntry()])
    first.fit(Classifier(), loader())
    first.save_checkpoint(path)
    callback = AddsEntry()
    trainer(callbacks=[callback], max_epochs=2).fit(Classifier(), loader(), ckpt_path=path)
    assert callback.loaded is not None and callback.loaded["note"] == "hello"


def test_seed_style_callback_works_unchanged() -> None:
    seen = []

    class MyCallback:
        def on_train_batch_end(self, loss: Any, output: Any) -> None:
            seen.append((float(loss), output))

    trainer(callbacks=[MyCallback()]).fit(Classifier(), loader(n=16))
    assert len(seen) == 2


def test_misspelled_hook_is_reported() -> None:
    class Typo:
        def on_train_epoch_ned(self) -> None: ...

    with pytest.warns(UserWarning, match="on_train_epoch_end"):
        trainer(callbacks=[Typo()])


def test_docs_say_validate_fires_on_after_setup_first() -> None:
    # Regression: the docs said validate() fires rows 15-20 only, but on_after_setup comes first.
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "trainer.md").read_text()
    sentence = next(
        line for line in text.splitlines() if line.startswith("`trainer.validate(model, loader)` fires")
    )
    assert "row 1 (`on_after_setup`)" in sentence and "rows 15-20" in sentence


class Ordered:
    def __init__(self, log: list[str], label: str, order: int) -> None:
        self.log = log
        self.label = label
        self.trainer_order = order  # an instance attribute is ignored: the class decides

    def on_train_epoch_end(self) -> None:
        self.log.append(self.label)


def ordered_class(order: int) -> type:
    return type(f"Order{order}", (Ordered,), {"trainer_order": order})


class EpochEndModel(Classifier):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.epoch_log = log

    def on_train_epoch_end(self, trainer: Any) -> None:
        self.epoch_log.append("model")
        trainer.log("epoch_score", float(trainer.current_epoch))


def test_late_callbacks_run_after_the_model_in_order_whatever_their_place() -> None:
    log: list[str] = []
    callbacks = [
        ordered_class(2)(log, "saves", 0),
        ordered_class(1)(log, "judges", 0),
        Ordered(log, "plain", 2),
        ordered_class(1)(log, "judges too", 0),
    ]
    fitted = trainer(max_epochs=1, callbacks=callbacks)
    fitted.fit(EpochEndModel(log), loader())
    assert log == ["plain", "model", "judges", "judges too", "saves"]
    assert list(fitted.fabric.callbacks[-3:]) == [callbacks[1], callbacks[3], callbacks[0]]


def test_early_stopping_sees_a_metric_the_model_logs_at_epoch_end() -> None:
    early_stopping = EarlyStopping("epoch_score", mode="min", patience=1, check_on_train_epoch_end=True)
    log: list[str] = []
    fitted = trainer(max_epochs=5, callbacks=[early_stopping])
    fitted.fit(EpochEndModel(log), loader())  # the score rises every epoch: stop after the second check
    assert early_stopping.should_stop and fitted.current_epoch == 2
    assert log == ["model", "model"]


def test_the_model_in_callbacks_is_a_clear_error() -> None:
    model = Classifier()
    with pytest.raises(ValueError, match="leave the model out of callbacks"):
        trainer(max_epochs=1, callbacks=[model]).fit(model, loader())


@pytest.mark.parametrize("order", [3, -1, "last", True, 1.0])
def test_a_bad_trainer_order_is_a_clear_error(order: Any) -> None:
    bad = type("Misplaced", (), {"trainer_order": order})()
    with pytest.raises(ValueError, match=r"Misplaced.trainer_order = .*must be 0 .* 1 .* or 2"):
        trainer(max_epochs=1, callbacks=[bad]).fit(Classifier(), loader())
