"""EarlyStopping: stop training when a monitored metric stops improving."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

from treadle.callbacks.arguments import check_bool
from treadle.callbacks.hooks import Callback
from treadle.callbacks.progress import write_line
from treadle.loggers.base import metric_value

__all__ = ["EarlyStopping"]

Mode = Literal["min", "max"]
_MODES = ("min", "max")


class EarlyStopping(Callback):
    """Stops training once ``monitor`` has gone ``patience`` checks in a row without improving.

    A check happens at the end of each validation run (``on_validation_end``), or at the end of each
    training epoch with ``check_on_train_epoch_end=True`` (for metrics logged during training; in the
    Trainer, an epoch cut short by ``max_steps``, a stop request or SIGTERM is not checked). A value
    improves when it beats the best so far by more than ``min_delta`` (lower for ``mode="min"``, higher
    for ``"max"``). With ``check_finite``, a NaN or infinite value stops training at once. In the Trainer,
    only validation inside ``fit`` is checked: ``trainer.validate()`` (e.g. a baseline before training)
    neither spends patience nor sets ``should_stop``.

    In the Trainer the value comes from ``trainer.callback_metrics`` and the stop goes through
    ``trainer.request_stop(reason)``, which the Trainer reduces across ranks so every rank stops at the
    same step. In a Fabric-only loop, pass the value with the hook (``metrics={...}``) and read
    ``early_stopping.should_stop``; when the loop runs on several processes the flag is reduced across them
    (``fabric.all_reduce_bool``), so every rank leaves the loop together. Its state (best value, checks
    without improvement) is saved in checkpoints through ``state_dict``.

    Args:
        monitor: the metric's name, e.g. ``"val_loss"``.
        mode: ``"min"`` if lower is better, ``"max"`` if higher is better.
        patience: stop after this many checks in a row without improvement (>= 1).
        min_delta: how much a value must beat the best by to count as an improvement (>= 0).
        check_finite: stop when the value is NaN or infinite.
        check_on_train_epoch_end: check at the end of each training epoch instead of after validation.
        strict: raise when ``monitor`` is missing at a check; otherwise warn once and skip the check.
        verbose: print why training stops (global rank 0).
        name: distinguishes the checkpoint state of several EarlyStopping callbacks in one run.

    Raises:
        ValueError: an argument is out of range; the message names it.

    Example::

        # Trainer
        trainer = Trainer(callbacks=[EarlyStopping("val_loss", patience=3)])

        # Fabric-only loop
        early_stopping = EarlyStopping("val_loss", patience=3)
        fabric = Fabric(callbacks=[early_stopping])
        for epoch in range(100):
            train_one_epoch()
            fabric.call("on_validation_end", metrics={"val_loss": evaluate()}, fabric=fabric)
            if early_stopping.should_stop:
                break
    """

    # After the model's own hooks (a metric it logs at epoch end counts), before ModelCheckpoint (which
    # then saves this callback's state after its check).
    trainer_order = 1

    def __init__(
        self,
        monitor: str,
        mode: Mode = "min",
        patience: int = 3,
        min_delta: float = 0.0,
        check_finite: bool = True,
        check_on_train_epoch_end: bool = False,
        strict: bool = True,
        verbose: bool = True,
        name: str | None = None,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"EarlyStopping(monitor={monitor!r}) must name a metric, e.g. monitor='val_loss'."
            )
        if mode not in _MODES:
            raise ValueError(f"EarlyStopping(mode={mode!r}) is not a choice. Choose one of: 'min', 'max'.")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping(patience={patience!r}) must be an int >= 1, e.g. patience=3.")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not min_delta >= 0:
            raise ValueError(
                f"EarlyStopping(min_delta={min_delta!r}) must be a number >= 0: how much better a value must "
                "be to count as an improvement."
            )
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.check_finite = check_bool("EarlyStopping", "check_finite", check_finite)
        self.check_on_train_epoch_end = check_bool(
            "EarlyStopping", "check_on_train_epoch_end", check_on_train_epoch_end
        )
        self.strict = check_bool("EarlyStopping", "strict", strict)
        self.verbose = check_bool("EarlyStopping", "verbose", verbose)
        self._name = name
        self.best_score: float | None = None
        self.wait_count = 0
        self.should_stop = False
        self.stopping_reason: str | None = None
        self._fabric: Any = None
        self._warned_missing = False
        self._in_fit = False  # between the Trainer's on_fit_start and on_fit_end (or on_exception)

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint: the class name, plus ``[name]`` if named."""
        base = type(self).__qualname__
        return base if self._name is None else f"{base}[{self._name}]"

    # --- hooks -------------------------------------------------------------------------------------------
    def on_after_setup(self, fabric: Any = None) -> None:
        if fabric is not None:
            self._fabric = fabric

    def on_fit_start(self) -> None:
        self._in_fit = True

    def on_fit_end(self) -> None:
        self._in_fit = False

    def on_exception(self) -> None:
        self._in_fit = False

    def on_validation_end(
        self, metrics: Mapping[str, Any] | None = None, trainer: Any = None, fabric: Any = None
    ) -> None:
        if not self.check_on_train_epoch_end:
            self._check(metrics, trainer, fabric)

    def on_train_epoch_end(
        self, metrics: Mapping[str, Any] | None = None, trainer: Any = None, fabric: Any = None
    ) -> None:
        # An epoch that training left early (max_steps, a stop request, SIGTERM) has only partial metrics,
        # and counting it would spend patience on a check that compares unlike values.
        if self.check_on_train_epoch_end and getattr(trainer, "epoch_finished", True):
            self._check(metrics, trainer, fabric)

    # --- the decision ------------------------------------------------------------------------------------
    def evaluate(self, value: float) -> tuple[bool, str | None]:
        """Count one check of ``value``; returns whether to stop and why. Updates ``best_score``.

        Example::

            stop, reason = early_stopping.evaluate(0.31)
        """
        if self.check_finite and not math.isfinite(value):
            return True, f"{self.monitor} = {value} is not finite"
        if self.best_score is None or self._improves(value, self.best_score):
            self.best_score = value
            self.wait_count = 0
            return False, None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (
                f"{self.monitor} did not improve by more than {self.min_delta:g} in {self.wait_count} checks "
                f"(best {self.best_score:.6g})"
            )
        return False, None

    def _improves(self, value: float, best: float) -> bool:
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta

    def _check(self, metrics: Mapping[str, Any] | None, trainer: Any, fabric: Any) -> None:
        if trainer is not None and not self._in_fit:
            # trainer.validate(): evaluating is not training, so it must not decide when a later fit stops.
            return
        if trainer is not None:
            metrics = trainer.callback_metrics
            fabric = trainer.fabric
        fabric = fabric if fabric is not None else self._fabric
        if metrics is None or self.monitor not in metrics:
            self._missing(metrics)
            return
        stop, reason = self.evaluate(float(metric_value(self.monitor, metrics[self.monitor])))
        if trainer is not None:
            if stop:
                trainer.request_stop(f"EarlyStopping: {reason}")
        elif fabric is not None and fabric.world_size > 1:
            # Every rank must reach this line, so every rank leaves its loop at the same check.
            stop = fabric.all_reduce_bool(stop, "any")
            if stop and reason is None:
                reason = "another rank's EarlyStopping asked to stop"
        if stop and not self.should_stop:
            self.should_stop = True
            self.stopping_reason = reason
            if self.verbose and (fabric is None or fabric.is_global_zero):
                write_line(f"EarlyStopping: stopping, {reason}.")

    def _missing(self, metrics: Mapping[str, Any] | None) -> None:
        available = ", ".join(sorted(metrics)) if metrics else "none"
        message = (
            f"EarlyStopping(monitor={self.monitor!r}) found no value for {self.monitor!r} (available: "
            f"{available}). Log it before the check (e.g. trainer.log({self.monitor!r}, value) in "
            "validation), or pass metrics={...} when you fire the hook in your own loop."
        )
        if self.strict:
            raise RuntimeError(message + " Pass strict=False to skip checks without it.")
        if not self._warned_missing:
            self._warned_missing = True
            warnings.warn(message, UserWarning, stacklevel=2)

    # --- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the monitor and mode, the best value, the checks without improvement and
        whether it decided to stop."""
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "best_score": self.best_score,
            "wait_count": self.wait_count,
            "should_stop": self.should_stop,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from ``state_dict()``; a state of another monitor or mode is ignored with a warning."""
        if state_dict.get("monitor") != self.monitor or state_dict.get("mode") != self.mode:
            warnings.warn(
                f"EarlyStopping: the checkpoint's state tracked monitor={state_dict.get('monitor')!r}, "
                f"mode={state_dict.get('mode')!r}, but this one tracks monitor={self.monitor!r}, "
                f"mode={self.mode!r}; starting from scratch instead of restoring it.",
                UserWarning,
                stacklevel=2,
            )
            return
        self.best_score = state_dict["best_score"]
        self.wait_count = int(state_dict["wait_count"])
        self.should_stop = bool(state_dict.get("should_stop", False))
