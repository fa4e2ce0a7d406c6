"""Small models and data for the Trainer tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from treadle.trainer import Trainer


def make_data(n: int = 64, features: int = 4, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


def loader(n: int = 64, batch_size: int = 8, shuffle: bool = False, seed: int = 0) -> DataLoader[Any]:
    return DataLoader(make_data(n, seed=seed), batch_size=batch_size, shuffle=shuffle)


class Classifier(nn.Module):
    """A two-layer MLP with dropout; configure_optimizers is replaceable per test."""

    def __init__(
        self, dropout: float = 0.0, configure: Callable[[nn.Module], Any] | None = None, lr: float = 0.1
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 2))
        self._configure = configure
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return {"loss": nn.functional.cross_entropy(logits, y), "acc": (logits.argmax(1) == y).float().mean()}

    def configure_optimizers(self) -> Any:
        if self._configure is not None:
            return self._configure(self)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def trainer(**kwargs: Any) -> Trainer:
    options: dict[str, Any] = {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False}
    options.update(kwargs)
    return Trainer(**options)


def parameters_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


class MemoryLogger:
    """A logger that keeps everything in lists."""

    name = version = root_dir = log_dir = None

    def __init__(self) -> None:
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.statuses: list[str] = []

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any) -> None:
        pass

    def save(self) -> None:
        pass

    def finalize(self, status: str) -> None:
        self.statuses.append(status)

    def values(self, name: str) -> list[tuple[int | None, float]]:
        return [(step, row[name]) for step, row in self.metrics if name in row]
