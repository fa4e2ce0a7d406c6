"""What the Trainer keeps between steps: loop progress, and how each learning-rate scheduler is stepped.

Both are small validated dataclasses. ``Progress`` is what a checkpoint records to resume the loop at the
exact batch it stopped at; ``SchedulerConfig`` is one scheduler parsed from ``configure_optimizers``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch

__all__ = ["Progress", "SchedulerConfig"]

Interval = Literal["step", "epoch"]
SCHEDULER_KEYS = ("scheduler", "interval", "frequency", "monitor", "strict", "name")


@dataclasses.dataclass
class Progress:
    """Where the fit loop is. Saved in every checkpoint and restored on resume.

    Attributes:
        epoch: the epoch in progress, counted from 0. It advances after the epoch's end (validation,
            ``on_train_epoch_end``, epoch-interval schedulers).
        global_step: optimizer steps taken since the start of training.
        batches_done: training batches of ``epoch`` already processed. Equal to the number of batches in
            the epoch once they are all done but the epoch's end has not run yet.
        time_elapsed: seconds spent in ``fit`` over all runs of this training, for ``max_time``.
        epoch_finished: the epoch's batches, validation and epoch-interval schedulers are done (true during
            ``on_train_epoch_end``); a run resumed from such a checkpoint starts the next epoch.
        step_boundary_pending: an optimizer step was taken and what follows it (validation by steps, the
            limits, the stop decision) has not run yet, as in ``on_train_batch_end``; a run resumed from such
            a checkpoint runs it first.

    Example::

        progress = Progress(epoch=2, global_step=150, batches_done=10)
        Progress.from_state_dict(progress.state_dict()) == progress  # True
    """

    epoch: int = 0
    global_step: int = 0
    batches_done: int = 0
    time_elapsed: float = 0.0
    epoch_finished: bool = False
    step_boundary_pending: bool = False

    def __post_init__(self) -> None:
        for name in ("epoch", "global_step", "batches_done"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Progress({name}={value!r}) must be an int >= 0.")
        elapsed = self.time_elapsed
        if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not math.isfinite(elapsed):
            raise ValueError(f"Progress(time_elapsed={elapsed!r}) must be a finite number of seconds.")
        if elapsed < 0:
            raise ValueError(f"Progress(time_elapsed={elapsed!r}) must be >= 0.")
        self.time_elapsed = float(elapsed)
        for flag in ("epoch_finished", "step_boundary_pending"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"Progress({flag}={getattr(self, flag)!r}) must be True or False.")

    def start_next_epoch(self) -> None:
        """Advance to the first batch of the next epoch."""
        self.epoch += 1
        self.batches_done = 0
        self.epoch_finished = False

    def state_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, for a checkpoint; ``from_state_dict`` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Progress:
        """Rebuild progress from ``state_dict()``; unknown or missing keys are an error.

        Raises:
            ValueError: ``state`` is not what ``state_dict`` writes.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"A checkpoint's 'progress' must be a dict, got {type(state).__name__}.")
        expected = {field.name for field in dataclasses.fields(cls)}
        # Checkpoints written before `step_boundary_pending` existed lack it; its default is what they meant.
        if set(state) != expected and set(state) != expected - {"step_boundary_pending"}:
            raise ValueError(
                f"A checkpoint's 'progress' has keys {sorted(state)}, expected {sorted(expected)}. "
                "Was it written by treadle's Trainer?"
            )
        return cls(**state)


@dataclasses.dataclass
class SchedulerConfig:
    """One learning-rate scheduler and when the Trainer steps it.

    Args:
        scheduler: a ``torch.optim.lr_scheduler`` object (any object with ``step()`` and ``state_dict()``).
        interval: ``"step"`` to step after optimizer steps, ``"epoch"`` after epochs.
        frequency: step the scheduler every this many intervals.
        monitor: the metric ``ReduceLROnPlateau`` reads from ``trainer.callback_metrics``; required for it.
        strict: if the monitored metric is missing when the scheduler is due, raise (True) or warn and skip
            this step (False).
        name: a label for learning-rate monitors; defaults to the scheduler's class name.

    Raises:
        ValueError: an entry has an invalid value, or a ``ReduceLROnPlateau`` has no ``monitor``.
        TypeError: ``scheduler`` has no ``step`` method.

    Example::

        SchedulerConfig(torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=1000), interval="step")
    """

    scheduler: Any
    interval: Interval = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None

    def __post_init__(self) -> None:
        where = "configure_optimizers(): lr_scheduler"
        if not callable(getattr(self.scheduler, "step", None)):
            raise TypeError(
                f"{where} 'scheduler' must be a learning-rate scheduler with a step() method, got "
                f"{type(self.scheduler).__name__}. Build one on your optimizer, e.g. "
                "torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)."
            )
        if self.interval not in ("step", "epoch"):
            raise ValueError(f"{where} 'interval'={self.interval!r} must be 'step' or 'epoch'.")
        frequency = self.frequency
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ValueError(
                f"{where} 'frequency'={frequency!r} must be a positive int (1 = every interval)."
            )
        if self.monitor is not None and not isinstance(self.monitor, str):
            raise ValueError(f"{where} 'monitor'={self.monitor!r} must be a metric name such as 'val_loss'.")
        if self.needs_metric and self.monitor is None:
            raise ValueError(
                f"{where}: ReduceLROnPlateau needs the metric it watches. Return "
                "{'optimizer': optimizer, 'lr_scheduler': {'scheduler': scheduler, 'monitor': 'val_loss'}}."
            )
        if not isinstance(self.strict, bool):
            raise ValueError(f"{where} 'strict'={self.strict!r} must be True or False.")
        if self.name is None:
            self.name = type(self.scheduler).__name__
        elif not isinstance(self.name, str):
            raise ValueError(f"{where} 'name'={self.name!r} must be a str.")

    @property
    def needs_metric(self) -> bool:
        """Whether ``step`` takes the monitored metric (``ReduceLROnPlateau``)."""
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    @classmethod
    def parse(cls, value: Any, monitor: str | None = None) -> SchedulerConfig:
        """A scheduler object or a config dict (keys: scheduler, interval, frequency, monitor, strict, name).

        Raises:
            ValueError: the dict has keys other than those, or no ``"scheduler"``.
        """
        if not isinstance(value, Mapping):
            return cls(value, monitor=monitor)
        unknown = [key for key in value if key not in SCHEDULER_KEYS]
        if unknown:
            raise ValueError(
                f"configure_optimizers(): lr_scheduler has unknown keys {unknown}. "
                f"Valid keys: {', '.join(SCHEDULER_KEYS)}."
            )
        if "scheduler" not in value:
            raise ValueError(
                "configure_optimizers(): the lr_scheduler dict has no 'scheduler'. "
                "Return {'scheduler': scheduler, 'interval': 'step'}."
            )
        entries = dict(value)
        if monitor is not None:
            entries.setdefault("monitor", monitor)
        return cls(**entries)
