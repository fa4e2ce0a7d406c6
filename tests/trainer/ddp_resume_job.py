"""A 2-rank DDP Trainer run, whole or interrupted and resumed; rank 0 writes the final weights.

Usage: python ddp_resume_job.py MODE FOLDER, MODE one of
  whole    train 2 epochs and write FOLDER/whole.pt
  stop     train, save FOLDER/mid.ckpt after optimizer step 7 (mid epoch 1) and stop
  resume   resume from FOLDER/mid.ckpt, finish 2 epochs and write FOLDER/resumed.pt
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from treadle import Trainer, seed_everything


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Dropout(0.2), nn.Linear(64, 3))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


class StopAfter:
    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer: Any) -> None:
        if trainer.global_step == self.step and not self.path.exists():
            trainer.save_checkpoint(self.path)
            trainer.request_stop("simulated preemption")


def main(mode: str, folder: Path) -> None:
    seed_everything(0, deterministic=True)
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(192, 16, generator=generator), torch.randint(0, 3, (192,), generator=generator)
    )
    callbacks = [StopAfter(folder / "mid.ckpt", 7)] if mode == "stop" else []
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        callbacks=callbacks,
        enable_progress_bar=False,
    )
    model = Net()
    trainer.fit(
        model,
        DataLoader(data, batch_size=16, shuffle=True),
        ckpt_path=folder / "mid.ckpt" if mode == "resume" else None,
    )
    if trainer.fabric.is_global_zero and mode != "stop":
        torch.save(model.state_dict(), folder / ("whole.pt" if mode == "whole" else "resumed.pt"))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
