"""Two DDP ranks on CPU (gloo) save in the background: rank 0 writes, both see a failure at the next wait.

Usage: python job_async_save.py OUT_DIR. Each rank saves what it observed to OUT_DIR/rank<R>.pt.
"""

from __future__ import annotations

import errno
import os
import sys
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from treadle import Fabric, checkpoint
from treadle.callbacks import ModelCheckpoint
from treadle.strategies import DDPStrategy


def main(out: str) -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy=DDPStrategy(timeout=timedelta(seconds=30)))
    fabric.launch()
    rank = fabric.global_rank
    seen: dict[str, Any] = {}
    model = fabric.setup(nn.Linear(8, 8))
    path = os.path.join(out, "async.pt")
    before = model.module.weight.detach().clone()
    fabric.save(path, {"model": model, "step": 1}, async_save=True)
    with torch.no_grad():
        model.module.weight.add_(1.0)
    fabric.wait_for_saves()
    seen["saved_is_the_old_state"] = torch.equal(
        torch.load(path, weights_only=True)["model"]["weight"], before
    )

    real = checkpoint.atomic_save

    def full(obj: Any, target: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    checkpoint.atomic_save = full  # type: ignore[assignment]
    fabric.save(path, {"model": model, "step": 2}, async_save=True)
    checkpoint.atomic_save = real  # type: ignore[assignment]
    try:
        fabric.wait_for_saves()
        seen["failure"] = "none"
    except Exception as error:
        seen["failure"] = f"{type(error).__name__}: {error}"
    seen["kept"] = torch.load(path, weights_only=True)["step"]

    # ModelCheckpoint in the background on both ranks: only rank 0 touches the files, after each write.
    folder = os.path.join(out, "checkpoints")
    callback = ModelCheckpoint(folder, filename="{epoch}", monitor="loss", save_top_k=1, async_save=True)
    for epoch, loss in enumerate([2.0, 1.0, 3.0]):
        state = {"model": model, "epoch": epoch}
        callback.on_train_epoch_end(
            fabric=fabric, state=state, metrics={"loss": loss}, epoch=epoch, step=epoch + 1
        )
    fabric.wait_for_saves()
    fabric.barrier()
    seen["files"] = sorted(name for name in os.listdir(folder) if not name.startswith("."))
    seen["last_epoch"] = torch.load(os.path.join(folder, "last.ckpt"), weights_only=True)["epoch"]
    fabric.barrier()
    torch.save(seen, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
