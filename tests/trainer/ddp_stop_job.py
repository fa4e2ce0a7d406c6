"""Run by test_stopping.py: a 2-rank DDP fit where only rank 1 asks to stop; each rank reports where it ended.

Usage: python ddp_stop_job.py OUT_DIR. The Trainer's fit starts rank 1 by running this script again.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from treadle.seed import seed_everything
from treadle.strategies.ddp import DDPStrategy
from treadle.trainer import Trainer


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


class StopOnRankOne:
    def on_train_batch_end(self, trainer: Any) -> None:
        if trainer.fabric.global_rank == 1 and trainer.global_step == 3:
            trainer.request_stop("rank 1 asked")


def main(out_dir: Path) -> None:
    seed_everything(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    data = TensorDataset(x, y)
    trainer = Trainer(
        accelerator="cpu",
        strategy=DDPStrategy(timeout=timedelta(seconds=60)),
        devices=2,
        max_epochs=3,
        grad_accum_steps=2,
        enable_progress_bar=False,
        callbacks=[StopOnRankOne()],
    )
    model = Model()
    trainer.fit(model, DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=8))
    metrics = trainer.validate(model, DataLoader(data, batch_size=8))
    rank = trainer.fabric.global_rank
    report = {
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "should_stop": trainer.should_stop,
        "stop_reason": trainer.stop_reason,
        "val_loss": metrics["val_loss"],
        "weights": [float(v) for v in torch.cat([p.detach().flatten() for p in model.parameters()])],
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
