"""A Trainer run on 2 ranks stopped mid-epoch, resumed on another number of processes; every rank writes
the sample ids it trained on.

Usage: python world_resume_job.py MODE FOLDER DEVICES, MODE one of
  stop     DEVICES ranks train 5 batches of epoch 0, save FOLDER/mid.ckpt and stop
  resume   DEVICES ranks resume from FOLDER/mid.ckpt and finish epoch 0
Each rank writes FOLDER/<MODE>-<DEVICES>-rank<R>.pt: the list of sample ids of each batch.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from treadle import Trainer, seed_everything


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        ids, x = batch
        self.seen.append(ids.tolist())
        return self.linear(x).square().mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StopAfter:
    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.request_stop("simulated preemption")


def main(mode: str, folder: Path, devices: int) -> None:
    seed_everything(0)
    data = TensorDataset(torch.arange(60), torch.randn(60, 4, generator=torch.Generator().manual_seed(1)))
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        max_epochs=1,
        callbacks=[StopAfter(folder / "mid.ckpt", 5)] if mode == "stop" else [],
        enable_progress_bar=False,
    )
    model = Net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(
            model,
            DataLoader(data, batch_size=4, shuffle=True),
            ckpt_path=None if mode == "stop" else folder / "mid.ckpt",
        )
    rank = trainer.global_rank
    notes = [str(w.message) for w in caught if "cannot be carried over" in str(w.message)]
    torch.save({"seen": model.seen, "warnings": notes}, folder / f"{mode}-{devices}-rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
