from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tests.callbacks.tiny_trainer import TinyRegression, fit_tiny
from treadle import Fabric
from treadle.callbacks.early_stopping import EarlyStopping


def run_fabric_loop(early_stopping: EarlyStopping, values: list[float]) -> int:
    """A Fabric-only loop that 'validates' to the given values; returns how many epochs ran."""
    fabric = Fabric(accelerator="cpu", callbacks=[early_stopping])
    epochs = 0
    for value in values:
        epochs += 1
        fabric.call("on_validation_end", metrics={"val_loss": torch.tensor(value)}, fabric=fabric)
        if early_stopping.should_stop:
            break
    return epochs


def test_stops_after_patience_checks_without_improvement(capsys: pytest.CaptureFixture[str]) -> None:
    early_stopping = EarlyStopping("val_loss", patience=2)
    epochs = run_fabric_loop(early_stopping, [1.0, 0.8, 0.9, 0.85, 0.7, 0.6])
    assert epochs == 4
    assert early_stopping.best_score == pytest.approx(0.8)
    assert early_stopping.stopping_reason is not None and "in 2 checks" in early_stopping.stopping_reason
    assert "EarlyStopping: stopping, val_loss did not improve" in capsys.readouterr().out


def test_min_delta_and_max_mode() -> None:
    early_stopping = EarlyStopping("acc", mode="max", patience=1, min_delta=0.05, verbose=False)
    assert early_stopping.evaluate(0.5) == (False, None)
    stop, reason = early_stopping.evaluate(0.54)  # better, but not by more than min_delta
    assert stop and reason is not None and "acc did not improve by more than 0.05" in reason
    fresh = EarlyStopping("acc", mode="max", patience=1, min_delta=0.05)
    fresh.evaluate(0.5)
    assert fresh.evaluate(0.56) == (False, None)
    assert fresh.best_score == 0.56


def test_non_finite_stops_at_once_unless_disabled() -> None:
    assert run_fabric_loop(EarlyStopping("val_loss", verbose=False), [1.0, math.nan, 0.5]) == 2
    assert (
        run_fabric_loop(EarlyStopping("val_loss", check_finite=False, patience=5), [1.0, math.nan, 0.5]) == 3
    )


def test_missing_monitor_strict_and_lenient() -> None:
    with pytest.raises(RuntimeError, match=r"found no value for 'val_loss' \(available: acc\)"):
        EarlyStopping("val_loss").on_validation_end(metrics={"acc": 1.0})
    lenient = EarlyStopping("val_loss", strict=False)
    with pytest.warns(UserWarning, match="found no value"):
        lenient.on_validation_end(metrics={"acc": 1.0})
    lenient.on_validation_end(metrics={"acc": 1.0})  # warns once only
    assert not lenient.should_stop


def test_train_epoch_end_checks_instead_when_asked() -> None:
    early_stopping = EarlyStopping("loss", patience=1, check_on_train_epoch_end=True, verbose=False)
    early_stopping.on_validation_end(metrics={})  # ignored
    early_stopping.on_train_epoch_end(metrics={"loss": 1.0})
    early_stopping.on_train_epoch_end(metrics={"loss": 1.0})
    assert early_stopping.should_stop


class StepLogger:
    """Logs the global step as ``score`` on every batch: a metric that never improves under mode="min"."""

    def __init__(self) -> None:
        self.checks_seen: list[tuple[int, bool]] = []

    def on_train_batch_end(self, trainer: Any) -> None:
        trainer.log("score", float(trainer.global_step))

    def on_train_epoch_end(self, trainer: Any) -> None:
        self.checks_seen.append((trainer.current_epoch, trainer.epoch_finished))


def test_an_epoch_cut_short_is_not_checked() -> None:
    # Regression: when max_steps ended training mid-epoch, that partial epoch counted as a check.
    early_stopping = EarlyStopping("score", patience=1, check_on_train_epoch_end=True, verbose=False)
    logger = StepLogger()
    fit_tiny(callbacks=[logger, early_stopping], max_epochs=5, max_steps=6)  # 4 batches per epoch
    assert logger.checks_seen == [(0, True), (1, False)]
    assert early_stopping.best_score == 4.0
    assert early_stopping.wait_count == 0
    assert not early_stopping.should_stop


class TwoRankFabric:
    """A stand-in for a 2-process Fabric whose other rank asks to stop."""

    world_size = 2
    is_global_zero = True

    def __init__(self) -> None:
        self.reduced: list[tuple[bool, str]] = []

    def all_reduce_bool(self, flag: bool, mode: str = "any") -> bool:
        self.reduced.append((flag, mode))
        return True


def test_fabric_only_reduces_across_ranks() -> None:
    fabric = TwoRankFabric()
    early_stopping = EarlyStopping("val_loss", verbose=False)
    early_stopping.on_validation_end(metrics={"val_loss": 1.0}, fabric=fabric)
    assert fabric.reduced == [(False, "any")]
    assert early_stopping.should_stop
    assert early_stopping.stopping_reason == "another rank's EarlyStopping asked to stop"


def test_state_round_trip_continues_patience() -> None:
    first = EarlyStopping("val_loss", patience=3, verbose=False)
    for value in (1.0, 1.1, 1.2):
        first.evaluate(value)
    resumed = EarlyStopping("val_loss", patience=3, verbose=False)
    resumed.load_state_dict(first.state_dict())
    assert resumed.best_score == 1.0 and resumed.wait_count == 2
    assert resumed.evaluate(1.3)[0] is True
    other = EarlyStopping("acc", mode="max")
    with pytest.warns(UserWarning, match="starting from scratch"):
        other.load_state_dict(first.state_dict())
    assert other.best_score is None


def test_state_key_includes_name() -> None:
    assert EarlyStopping("a").state_key == "EarlyStopping"
    assert EarlyStopping("a", name="loss").state_key == "EarlyStopping[loss]"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"monitor": ""}, "monitor=''"),
        ({"monitor": "x", "mode": "low"}, "mode='low'"),
        ({"monitor": "x", "patience": 0}, "patience=0"),
        ({"monitor": "x", "min_delta": -1}, "min_delta=-1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)


class DivergingRegression(TinyRegression):
    """Validation loss goes up every epoch, so EarlyStopping must stop the Trainer."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def on_validation_epoch_end(self, trainer: Any = None) -> None:
        self.epoch += 1
        if trainer is not None:
            trainer.log("val_loss", float(self.epoch))


def test_trainer_stops_through_request_stop() -> None:
    early_stopping = EarlyStopping("val_loss", patience=2, verbose=False)
    trainer = fit_tiny(callbacks=[early_stopping], model=DivergingRegression(), max_epochs=20)
    assert early_stopping.should_stop
    assert trainer.should_stop
    assert trainer.current_epoch < 5


@pytest.mark.parametrize("flag", ["check_finite", "check_on_train_epoch_end", "strict", "verbose"])
def test_flags_must_be_bools(flag: str) -> None:
    # Regression: EarlyStopping(check_finite="no") silently turned the check on.
    with pytest.raises(TypeError, match=rf"EarlyStopping\({flag}='no'\) must be True or False"):
        EarlyStopping("val_loss", **{flag: "no"})


def test_trainer_validate_outside_fit_is_not_a_check() -> None:
    from tests.callbacks.tiny_trainer import loaders, trainer_class

    early_stopping = EarlyStopping("val_loss", patience=2, verbose=False)
    trainer = trainer_class()(
        accelerator="cpu", max_epochs=3, callbacks=[early_stopping], enable_progress_bar=False
    )
    model = TinyRegression()
    train, val = loaders()
    for _ in range(3):  # baseline evaluations: the same model, so no improvement after the first
        trainer.validate(model, val)
    assert early_stopping.best_score is None
    assert early_stopping.wait_count == 0
    assert not early_stopping.should_stop and not trainer.should_stop
    trainer.fit(model, train, val)
    assert early_stopping.best_score is not None  # validation inside fit is checked
    after_fit = early_stopping.state_dict()
    trainer.validate(model, val)
    assert early_stopping.state_dict() == after_fit


def test_a_plain_fabric_loop_without_on_fit_start_still_checks() -> None:
    early_stopping = EarlyStopping("val_loss", patience=2, verbose=False)
    assert run_fabric_loop(early_stopping, [1.0, 1.0, 1.0, 1.0]) == 3
