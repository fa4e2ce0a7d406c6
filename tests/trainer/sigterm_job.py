"""Run by test_sigterm.py: fit a small model; on SIGTERM the Trainer saves last.ckpt and fit returns.

Usage: python sigterm_job.py OUT_DIR MODE, MODE being "interrupt" (prints READY after step 4, then trains
slowly so the test's SIGTERM arrives mid-training) or "resume" (continues from OUT_DIR/last.ckpt).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from treadle.seed import seed_everything
from treadle.trainer import Trainer


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


class SlowAfterReady:
    """Says READY once step 4 is done, then slows every batch down so a signal lands mid-training."""

    def on_train_batch_end(self, trainer: Any) -> None:
        if trainer.global_step == 4 and trainer.batch_idx == 3:
            print("READY", flush=True)
        if trainer.global_step >= 4:
            time.sleep(0.05)


class Statuses:
    name = version = root_dir = log_dir = None

    def __init__(self) -> None:
        self.statuses: list[str] = []

    def log_metrics(self, metrics: Any, step: int | None = None) -> None: ...

    def log_hyperparams(self, params: Any) -> None: ...

    def save(self) -> None: ...

    def finalize(self, status: str) -> None:
        self.statuses.append(status)


def train(out_dir: Path, mode: str) -> dict[str, Any]:
    seed_everything(0)
    x = torch.randn(80, 4)
    y = (x[:, 0] * x[:, 1] > 0).long()
    logger = Statuses()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=3,
        enable_progress_bar=False,
        checkpoint_dir=out_dir,
        loggers=logger,
        callbacks=[SlowAfterReady()] if mode == "interrupt" else [],
    )
    model = Model()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    trainer.fit(model, loader, ckpt_path="last" if mode == "resume" else None)
    torch.save(model.state_dict(), out_dir / f"weights_{mode}.pt")
    return {
        "global_step": trainer.global_step,
        "stop_reason": trainer.stop_reason,
        "statuses": logger.statuses,
        "handler_restored": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
    }


if __name__ == "__main__":
    directory, run_mode = Path(sys.argv[1]), sys.argv[2]
    report = train(directory, run_mode)
    (directory / f"report_{run_mode}.json").write_text(json.dumps(report))
