"""Loggers record metrics and hyperparameters; Fabric calls them on global rank 0.

``CSVLogger`` needs nothing beyond the standard library; ``TensorBoardLogger`` imports TensorBoard only when
it first writes.
"""

from __future__ import annotations

from treadle.loggers.base import Logger
from treadle.loggers.csv import CSVLogger, read_csv_metrics
from treadle.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger", "read_csv_metrics"]
