"""The Trainer: a complete fit loop built on Fabric's public API, with callbacks, checkpoints and exact resume."""

from __future__ import annotations

from treadle.trainer.state import Progress, SchedulerConfig
from treadle.trainer.trainer import Trainer

__all__ = ["Progress", "SchedulerConfig", "Trainer"]
