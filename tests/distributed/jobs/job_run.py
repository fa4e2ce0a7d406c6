"""A script written for `treadle run`: Fabric() without arguments takes the command line's settings.

Usage: treadle run [options] job_run.py OUT_DIR [fail]. Each rank saves what it saw to OUT_DIR/rank<R>.pt.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import torch

from treadle import Fabric

if __name__ == "__main__":
    out = sys.argv[1]
    fabric = Fabric()
    fabric.launch()  # a no-op: torchrun already started every process
    rank = fabric.global_rank
    if "fail" in sys.argv[2:] and rank == 1:
        raise ValueError("rank 1 failed on purpose")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        in_code = Fabric(precision="32-true", accelerator="cpu", strategy="ddp")
        conflicting = Fabric(precision="64-true")
    seen: dict[str, Any] = {
        "rank": rank,
        "world_size": fabric.world_size,
        "strategy": fabric.strategy.name,
        "precision": fabric.precision.name,
        "accelerator": fabric.accelerator.name,
        "argv": sys.argv[2:],
        "code_wins": conflicting.precision.name,
        "default_gives_way": in_code.precision.name,
        "warnings": [str(w.message) for w in caught],
        "total": fabric.all_reduce(torch.tensor(1.0), reduce_op="sum").item(),
    }
    torch.save(seen, os.path.join(out, f"rank{rank}.pt"))
    fabric.barrier()
