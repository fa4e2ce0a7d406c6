"""Callbacks: the dispatcher behind `fabric.call`, hook names with typo detection, the `Callback` base, and
the built-in callbacks (loaded on first use, so `import treadle` stays cheap)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from treadle.callbacks.dispatch import CallbackDispatcher
from treadle.callbacks.hooks import (
    FABRIC_HOOKS,
    KNOWN_HOOKS,
    TRAINER_HOOKS,
    Callback,
    HookRegistry,
    rank_zero_only,
)

if TYPE_CHECKING:
    from treadle.callbacks.early_stopping import EarlyStopping
    from treadle.callbacks.loss_guard import LossGuard
    from treadle.callbacks.lr_monitor import LearningRateMonitor
    from treadle.callbacks.model_checkpoint import ModelCheckpoint
    from treadle.callbacks.profiler import Profiler
    from treadle.callbacks.progress import ProgressBar
    from treadle.callbacks.throughput import ThroughputMonitor
    from treadle.callbacks.timer import IterationTimer

BUILT_INS = {
    "EarlyStopping": "treadle.callbacks.early_stopping",
    "IterationTimer": "treadle.callbacks.timer",
    "LearningRateMonitor": "treadle.callbacks.lr_monitor",
    "LossGuard": "treadle.callbacks.loss_guard",
    "ModelCheckpoint": "treadle.callbacks.model_checkpoint",
    "Profiler": "treadle.callbacks.profiler",
    "ProgressBar": "treadle.callbacks.progress",
    "ThroughputMonitor": "treadle.callbacks.throughput",
}

__all__ = [
    "FABRIC_HOOKS",
    "KNOWN_HOOKS",
    "TRAINER_HOOKS",
    "Callback",
    "CallbackDispatcher",
    "EarlyStopping",
    "HookRegistry",
    "IterationTimer",
    "LearningRateMonitor",
    "LossGuard",
    "ModelCheckpoint",
    "Profiler",
    "ProgressBar",
    "ThroughputMonitor",
    "rank_zero_only",
]


def __getattr__(name: str) -> Any:
    module = BUILT_INS.get(name)
    if module is None:
        raise AttributeError(f"module 'treadle.callbacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
