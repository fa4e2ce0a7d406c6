"""Train a model with treadle's Trainer: a plain nn.Module, callbacks, CSV logs, checkpoints and resume.

The model says how to compute a loss (``training_step``), what to measure (``validation_step``) and how to
optimise (``configure_optimizers``); the Trainer runs the loop. Stop it with Ctrl-C or SIGTERM and run it
again with ``--resume``: it continues from ``ROOT/checkpoints/last.ckpt``.

Run:  python examples/trainer_script.py --max-epochs 20 --root runs
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from treadle.callbacks.early_stopping import EarlyStopping
from treadle.callbacks.model_checkpoint import ModelCheckpoint
from treadle.loggers import CSVLogger
from treadle.seed import seed_everything
from treadle.trainer import Trainer


class SineRegressor(nn.Module):
    """Learns y = sin(x) from noisy samples."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)  # logged as val_loss, averaged over the epoch

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}

    # The model's own hooks run after the callbacks', with the same arguments.
    def on_train_epoch_end(self, trainer: Trainer) -> None:
        if trainer.is_global_zero and "val_loss" in trainer.callback_metrics:
            print(f"epoch {trainer.current_epoch}: val_loss {trainer.callback_metrics['val_loss']:.4f}")


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator) * 6 - 3
    return TensorDataset(x, torch.sin(x) + 0.1 * torch.randn(n, 1, generator=generator))


def main(root: Path, max_epochs: int, resume: bool, progress_bar: bool) -> dict[str, float]:
    seed_everything(0)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        # save_top_k=0: no ranked files, only ROOT/checkpoints/last.ckpt after every epoch, for --resume.
        callbacks=[EarlyStopping("val_loss", patience=5), ModelCheckpoint(save_top_k=0)],
        # resume=True adds to metrics.csv; a fresh run over the same folder starts it afresh (with a warning).
        loggers=CSVLogger(root, name="sine", version=0, resume=resume),
        checkpoint_dir=root / "checkpoints",
        enable_progress_bar=progress_bar,
        gradient_clip_val=1.0,
    )
    train = DataLoader(make_data(1024, seed=0), batch_size=64, shuffle=True)
    val = DataLoader(make_data(256, seed=1), batch_size=256)
    trainer.fit(SineRegressor(), train, val, ckpt_path="last" if resume else None)
    print(f"stopped: {trainer.stop_reason}; logs in {trainer.log_dir}")
    return trainer.callback_metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs"))
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args()
    main(args.root, args.max_epochs, args.resume, not args.no_progress_bar)
