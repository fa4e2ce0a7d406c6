"""treadle: callbacks, devices, precision and distributed training for your own PyTorch loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from treadle.callbacks import Callback, rank_zero_only
from treadle.fabric import Fabric

__version__ = "0.1.0"

# Loaded on first use so that `import treadle` costs little more than `import torch`.
_LAZY = {
    "Trainer": "treadle.trainer",
    "EarlyStopping": "treadle.callbacks",
    "IterationTimer": "treadle.callbacks",
    "LearningRateMonitor": "treadle.callbacks",
    "LossGuard": "treadle.callbacks",
    "ModelCheckpoint": "treadle.callbacks",
    "Profiler": "treadle.callbacks",
    "ProgressBar": "treadle.callbacks",
    "ThroughputMonitor": "treadle.callbacks",
    "CSVLogger": "treadle.loggers",
    "TensorBoardLogger": "treadle.loggers",
    "Logger": "treadle.loggers",
    "seed_everything": "treadle.seed",
    "is_wrapped": "treadle.wrappers",
}

if TYPE_CHECKING:
    from treadle.callbacks import (
        EarlyStopping,
        IterationTimer,
        LearningRateMonitor,
        LossGuard,
        ModelCheckpoint,
        Profiler,
        ProgressBar,
        ThroughputMonitor,
    )
    from treadle.loggers import CSVLogger, Logger, TensorBoardLogger
    from treadle.seed import seed_everything
    from treadle.trainer import Trainer
    from treadle.wrappers import is_wrapped

__all__ = [
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "Fabric",
    "IterationTimer",
    "LearningRateMonitor",
    "Logger",
    "LossGuard",
    "ModelCheckpoint",
    "Profiler",
    "ProgressBar",
    "TensorBoardLogger",
    "ThroughputMonitor",
    "Trainer",
    "is_wrapped",
    "rank_zero_only",
    "seed_everything",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'treadle' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
