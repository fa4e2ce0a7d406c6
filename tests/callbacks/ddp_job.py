"""Two DDP ranks on CPU running the built-in callbacks in a Fabric-only loop.

Usage: python ddp_job.py OUT_DIR. Each rank saves what it observed to OUT_DIR/rank<R>.pt; the test asserts.
"""

from __future__ import annotations

import math
import os
import sys
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from treadle import Fabric
from treadle.callbacks.early_stopping import EarlyStopping
from treadle.callbacks.loss_guard import LossGuard
from treadle.callbacks.model_checkpoint import ModelCheckpoint
from treadle.strategies.ddp import DDPStrategy


def main(out: str) -> None:
    early_stopping = EarlyStopping("val_loss", patience=1, verbose=False)
    guard = LossGuard(action="skip", verbose=False)
    checkpoint = ModelCheckpoint(os.path.join(out, "checkpoints"), monitor="val_loss", save_top_k=1)
    fabric = Fabric(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(timeout=timedelta(seconds=30)),
        callbacks=[early_stopping, guard, checkpoint],
    )
    fabric.launch()
    rank = fabric.global_rank
    seen: dict[str, Any] = {"rank": rank}

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    state = {"model": model, "optimizer": optimizer, "checkpoint_callback": checkpoint}

    # Rank 0's validation keeps improving, rank 1's gets worse from the second check: both stop there.
    values = [1.0, 0.5, 0.4, 0.3] if rank == 0 else [1.0, 1.1, 1.2, 1.3]
    checks = 0
    for epoch, value in enumerate(values):
        # Rank 1's loss is NaN at step 2: the guard must skip that step on both ranks.
        scale = math.nan if (rank == 1 and epoch == 1) else 1.0
        loss = model(torch.full((2, 3), float(rank + 1))).pow(2).mean() * scale
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        metrics = {"val_loss": value}
        fabric.call("on_validation_end", metrics=metrics, fabric=fabric)
        fabric.call(
            "on_train_epoch_end", fabric=fabric, state=state, metrics=metrics, epoch=epoch, step=epoch + 1
        )
        checks += 1
        if early_stopping.should_stop:
            break
    seen["checks"] = checks
    seen["stopping_reason"] = early_stopping.stopping_reason
    seen["skipped_steps"] = guard.skipped_steps
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = fabric.all_gather(weights)
    seen["weights_finite"] = bool(torch.isfinite(weights).all())
    seen["weights_identical"] = bool(torch.equal(gathered[0], gathered[1]))
    seen["kept"] = checkpoint.best_k_models
    fabric.barrier("files written")
    seen["files"] = sorted(name for name in os.listdir(os.path.join(out, "checkpoints")) if not name.startswith("."))
    torch.save(seen, os.path.join(out, f"rank{rank}.pt"))
    fabric.barrier("end")


if __name__ == "__main__":
    main(sys.argv[1])
