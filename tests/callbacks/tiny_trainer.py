"""A tiny regression task for running the built-in callbacks inside the Trainer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def trainer_class() -> Any:
    try:
        from treadle.trainer import Trainer
    except ImportError:
        pytest.skip("treadle.trainer.Trainer has not landed yet; these tests run once it exists")
    return Trainer


class TinyRegression(nn.Module):
    """y = 2x + 1 on 1 feature; logs val_loss from validation."""

    def __init__(self, lr: float = 0.05, scheduler: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.lr = lr
        self.scheduler = scheduler
        self.trainer: Any = None
        self._val_losses: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self._val_losses.append(loss.detach())
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_losses = []

    def on_validation_epoch_end(self, trainer: Any = None) -> None:
        if trainer is not None and self._val_losses:
            trainer.log("val_loss", torch.stack(self._val_losses).mean())

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if not self.scheduler:
            return optimizer
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


class FailsAtBatch(TinyRegression):
    """Raises KeyboardInterrupt in ``training_step`` of batch ``bad_batch``, as a user interrupting training."""

    def __init__(self, bad_batch: int) -> None:
        super().__init__()
        self.bad_batch = bad_batch

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == self.bad_batch:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


def loaders(n: int = 32, batch_size: int = 8) -> tuple[DataLoader[Any], DataLoader[Any]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=generator)
    y = 2 * x + 1
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    val = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=batch_size)
    return train, val


def fit_tiny(callbacks: list[Any], model: nn.Module | None = None, **trainer_kwargs: Any) -> Any:
    Trainer = trainer_class()
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "max_epochs": 2,
        "enable_progress_bar": False,
        "callbacks": callbacks,
    }
    options.update(trainer_kwargs)
    trainer = Trainer(**options)
    train, val = loaders()
    trainer.fit(model if model is not None else TinyRegression(), train, val)
    return trainer
