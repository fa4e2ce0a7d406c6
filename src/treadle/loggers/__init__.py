"""Loggers record metrics and hyperparameters; Fabric calls them on global rank 0.

``CSVLogger`` needs nothing beyond the standard library; ``TensorBoardLogger``, ``MLflowLogger`` and
``WandbLogger`` import their package only when they first write.
"""

from __future__ import annotations

from treadle.loggers.base import Logger
from treadle.loggers.csv import CSVLogger, read_csv_metrics
from treadle.loggers.mlflow import MLflowLogger
from treadle.loggers.tensorboard import TensorBoardLogger
from treadle.loggers.wandb import WandbLogger

MLFlowLogger = MLflowLogger  # Lightning's spelling

__all__ = [
    "CSVLogger",
    "Logger",
    "MLFlowLogger",
    "MLflowLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "read_csv_metrics",
]
