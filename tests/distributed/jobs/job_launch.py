"""fabric.launch(function) with both start methods, and ranks that fail in different ways.

Usage: python job_launch.py START_METHOD MODE, where MODE is one of
  ok      every rank returns {"rank": r, ...}; the launching process prints "RESULT <repr>"
  raise1  rank 1 raises while rank 0 waits in a barrier
  raise0  rank 0 raises while rank 1 waits in a barrier
  kill1   rank 1 dies from SIGKILL while rank 0 is busy outside any collective
  kill1c  rank 1 dies from SIGKILL while rank 0 waits in a collective (all_reduce)
  hang1   rank 1 spins in Python forever while rank 0 waits in all_reduce (hang_timeout=3 s)
  hangslow  no hang: rank 0 works 6 s in small steps, then writes a checkpoint that takes 6 s (a slow
          disk), while rank 1 waits (hang_timeout=3 s); the job ends normally
  wait    prints READY<rank>, then rank 0 waits in a barrier while rank 1 sleeps (for Ctrl-C)
  update  a model and its optimizer are passed to launch; one SGD step on each rank; every rank prints
          "UPDATE <rank> <max |weight - (old - lr * buffer)|> <max |buffer - (0.9 * old buffer + grad)|>"
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import timedelta
from typing import Any

import torch

from treadle import Fabric
from treadle.strategies.ddp import DDPStrategy


def train(fabric: Fabric, mode: str, factor: int) -> dict[str, Any]:
    model = fabric.setup(torch.nn.Linear(2, 2))
    rank = fabric.global_rank
    if mode == "raise1" and rank == 1:
        raise ValueError("rank 1 failed on purpose")
    if mode == "raise0" and rank == 0:
        raise ValueError("rank 0 failed on purpose")
    if mode == "kill1":
        if rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # busy in Python, in no collective: only the watcher can end it
            time.sleep(0.05)
    if mode == "kill1c":
        if rank == 1:
            time.sleep(0.5)  # rank 0 is inside the all_reduce by then
            os.kill(os.getpid(), signal.SIGKILL)
        fabric.all_reduce(torch.ones(4))
    if mode == "hang1":
        if rank == 1:
            ready = False
            while not ready:  # a wait that never ends, in the user's own code
                time.sleep(0.01)
        fabric.all_reduce(torch.ones(4))
    if mode == "hangslow":
        if rank == 0:
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:  # busy, but moving: in and out of calls
                torch.randn(64, 64).matmul(torch.randn(64, 64)).sum().item()
        from treadle import checkpoint

        write = checkpoint.atomic_save

        def slow_write(obj: Any, path: Any) -> None:
            time.sleep(6)
            write(obj, path)

        checkpoint.atomic_save = slow_write  # type: ignore[assignment]
        fabric.save(os.path.join(os.environ["JOB_DIR"], "slow.ckpt"), {"step": 1})
        fabric.all_reduce(torch.ones(4))
    if mode == "wait":
        sys.stdout.write(f"READY{rank}\n")
        sys.stdout.flush()
        if rank == 1:
            time.sleep(60)
    fabric.barrier()
    total = fabric.all_reduce(torch.tensor(float(rank)), reduce_op="sum").item()
    return {
        "rank": rank,
        "value": factor * (rank + 1),
        "total": total,
        "params": sum(p.numel() for p in model.parameters()),
    }


def one_step(fabric: Fabric, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model, optimizer = fabric.setup(model, optimizer)
    before = model.weight.detach().clone()
    old_buffer = optimizer.state[model.module.weight]["momentum_buffer"].clone()
    x = torch.full((4, 2), float(fabric.global_rank + 1))  # different data per rank: DDP averages the grads
    fabric.backward(model(x).pow(2).sum())
    optimizer.step()
    grad = model.weight.grad
    assert grad is not None
    buffer = optimizer.state[model.module.weight]["momentum_buffer"]
    # SGD computes exactly these, so a rank's own single update matches bit for bit.
    update = before.add(buffer, alpha=-0.1).sub(model.weight.detach()).abs().max().item()
    momentum = buffer.sub(old_buffer.mul(0.9).add(grad)).abs().max().item()
    sys.stdout.write(f"UPDATE {fabric.global_rank} {update} {momentum}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    start_method, mode = sys.argv[1], sys.argv[2]
    fabric = Fabric(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(
            start_method=start_method,  # type: ignore[arg-type]
            timeout=timedelta(seconds=30),
            hang_timeout=3.0 if mode.startswith("hang") else "auto",
        ),
    )
    if mode == "update":
        torch.manual_seed(0)
        net = torch.nn.Linear(2, 2)
        sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        net(torch.ones(1, 2)).sum().backward()
        sgd.step()  # the optimizer has a momentum buffer before it is passed, so it is shared too
        sgd.zero_grad()
        fabric.launch(one_step, net, sgd)
        sys.exit(0)
    result = fabric.launch(train, mode, factor=10)
    # One write per line: print() writes the text and the newline separately, and two ranks share stdout.
    sys.stdout.write(f"RESULT {result!r}\n")
    sys.stdout.flush()
