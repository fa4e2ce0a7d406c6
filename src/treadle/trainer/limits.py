"""When training has gone long enough: ``max_epochs``, ``max_steps`` and ``max_time``, and the clock behind it."""

from __future__ import annotations

import time

from treadle.trainer.config import UNLIMITED, LoopSettings
from treadle.trainer.state import Progress

__all__ = ["Limits"]


class Limits:
    """The limits of one Trainer, and a clock that counts time spent in ``fit`` across resumed runs.

    Example::

        limits = Limits(settings)
        limits.start_clock(progress.time_elapsed)
        reason = limits.reached(progress)  # e.g. "max_steps=100 reached", or None
    """

    def __init__(self, settings: LoopSettings) -> None:
        self._settings = settings
        self._started = time.monotonic()
        self._before = 0.0

    def start_clock(self, elapsed_before: float) -> None:
        """Start counting now, on top of the time earlier runs of this training took."""
        self._started, self._before = time.monotonic(), elapsed_before

    def elapsed(self) -> float:
        """Seconds of training so far, earlier runs included."""
        return self._before + time.monotonic() - self._started

    def reached(self, progress: Progress) -> str | None:
        """Which limit ``progress`` has reached, as a reason to stop; None if none."""
        max_epochs, max_steps, max_time = (
            self._settings.max_epochs, self._settings.max_steps, self._settings.max_time,
        )  # fmt: skip
        if max_epochs not in (None, UNLIMITED) and progress.epoch >= max_epochs:
            return f"max_epochs={max_epochs} reached"
        if max_steps not in (None, UNLIMITED) and progress.global_step >= max_steps:
            return f"max_steps={max_steps} reached"
        if max_time is not None and self.elapsed() >= max_time:
            return f"max_time={max_time:g}s reached"
        return None
