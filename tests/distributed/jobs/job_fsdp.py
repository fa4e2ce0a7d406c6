"""Two ranks of FSDP2 on CPU (gloo): training equals one process, accumulation, clipping, both checkpoint kinds.

Usage: python job_fsdp.py OUT_DIR. Each rank saves what it observed to OUT_DIR/rank<R>.pt; the test asserts.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from treadle import Fabric
from treadle.checkpoint import save_checkpoint
from treadle.strategies.fsdp import FSDPStrategy


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x))


class Broken:
    def state_dict(self) -> dict[str, Any]:
        raise RuntimeError("cannot be saved")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Block(), Block(), nn.Linear(8, 2))


def batch(seed: int, rows: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 8, generator=generator), torch.randn(rows, 2, generator=generator)


def full(tensor: Any) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def difference(sharded: nn.Module, reference: nn.Module) -> float:
    pairs = zip(sharded.state_dict().values(), reference.state_dict().values(), strict=True)
    return max((full(a) - b).abs().max().item() for a, b in pairs)


def exp_avg(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [
        full(optimizer.state[p]["exp_avg"]).clone()
        for group in optimizer.param_groups
        for p in group["params"]
    ]


def main(out: str) -> None:
    strategy = FSDPStrategy(shard_modules={Block}, timeout=timedelta(seconds=30))
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy)
    fabric.launch()
    rank = fabric.global_rank
    mine = slice(4 * rank, 4 * rank + 4)
    seen: dict[str, Any] = {"rank": rank}

    reference = make_model()
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.01)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)  # made before setup: setup re-targets it
    model, optimizer = fabric.setup(model, optimizer)
    module_params = {id(p) for p in model.parameters()}
    seen["optimizer_retargeted"] = all(id(p) in module_params for p in optimizer.param_groups[0]["params"])
    seen["blocks_sharded"] = [type(block).__name__ for block in model.module[:2]]

    for step in range(3):
        inputs, targets = batch(step)
        fabric.backward(nn.functional.mse_loss(model(inputs[mine]), targets[mine]))
        nn.functional.mse_loss(reference(inputs), targets).backward()
        if step == 2:
            norm = fabric.clip_gradients(model, optimizer, max_norm=1e6)
            seen["norm_type"] = type(norm).__name__
            seen["norm_difference"] = abs(
                norm.item() - nn.utils.clip_grad_norm_(reference.parameters(), 1e6).item()
            )
        optimizer.step()
        optimizer.zero_grad()
        reference_optimizer.step()
        reference_optimizer.zero_grad()
    seen["train_difference"] = difference(model, reference)

    # no_backward_sync: the first half-batch accumulates locally, the second synchronises both.
    inputs, targets = batch(10, 16)
    micro = [slice(8 * rank + 4 * i, 8 * rank + 4 * i + 4) for i in range(2)]
    with fabric.no_backward_sync(model, enabled=True):
        fabric.backward(nn.functional.mse_loss(model(inputs[micro[0]]), targets[micro[0]]) / 2)
    fabric.backward(nn.functional.mse_loss(model(inputs[micro[1]]), targets[micro[1]]) / 2)
    nn.functional.mse_loss(reference(inputs), targets).backward()
    grads = zip(model.parameters(), reference.parameters(), strict=True)
    seen["accumulated_grad_difference"] = max((full(a.grad) - b.grad).abs().max().item() for a, b in grads)  # type: ignore[union-attr]
    optimizer.zero_grad()
    reference_optimizer.zero_grad()

    # Sharded checkpoint: a folder; load restores weights, optimizer state and plain values.
    sharded = os.path.join(out, "sharded")
    fabric.save(sharded, {"model": model, "optimizer": optimizer, "step": 3, "extra": {"lr": 0.01}})
    fabric.save(
        sharded, {"model": model, "optimizer": optimizer, "step": 3, "extra": {"lr": 0.01}}
    )  # replaces
    seen["sharded_files"] = sorted(os.listdir(sharded))
    moments = exp_avg(optimizer)
    weights = {name: full(value).clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    for state in optimizer.state.values():
        state["exp_avg"].zero_()
    state: dict[str, Any] = {"model": model, "optimizer": optimizer, "step": 0, "extra": None}
    fabric.load(sharded, state)
    restored = all(torch.equal(weights[name], full(value)) for name, value in model.state_dict().items())
    seen["sharded_restored"] = [
        restored,
        all(torch.equal(a, b) for a, b in zip(moments, exp_avg(optimizer), strict=True)),
    ]
    seen["sharded_plain_values"] = [state["step"], state["extra"]]
    meta_time = os.path.getmtime(os.path.join(sharded, "meta.pt"))
    try:
        fabric.save(sharded, {"model": model, "broken": Broken()})
        seen["failed_save"] = "no error"
    except RuntimeError as error:
        seen["failed_save"] = str(error)
    seen["after_failed_save"] = [os.path.getmtime(os.path.join(sharded, "meta.pt")) == meta_time]

    # Full checkpoint: one file of plain tensors, keyed by parameter names.
    strategy.state_dict_type = "full"
    full_path = os.path.join(out, "full.pt")
    fabric.save(full_path, {"model": model, "optimizer": optimizer, "step": 4})
    raw = torch.load(full_path, weights_only=True)
    seen["full_keys"] = [sorted(raw["model"]), sorted(raw["optimizer"]["state"])[:1], raw["step"]]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    state = {"model": model, "optimizer": optimizer, "step": 0}
    fabric.load(full_path, state)
    restored = all(torch.equal(weights[name], full(value)) for name, value in model.state_dict().items())
    seen["full_restored"] = [
        restored,
        all(torch.equal(a, b) for a, b in zip(moments, exp_avg(optimizer), strict=True)),
        state["step"],
    ]

    # A checkpoint from one process (optimizer state keyed by position) loads into the sharded model, and
    # training continues exactly as the single process would.
    single = os.path.join(out, "single.pt")
    if rank == 0:
        save_checkpoint(single, {"model": reference, "optimizer": reference_optimizer})
    fabric.barrier()
    fabric.load(single, {"model": model, "optimizer": optimizer})
    seen["single_loaded_difference"] = difference(model, reference)
    inputs, targets = batch(20)
    fabric.backward(nn.functional.mse_loss(model(inputs[mine]), targets[mine]))
    nn.functional.mse_loss(reference(inputs), targets).backward()
    optimizer.step()
    reference_optimizer.step()
    seen["continued_difference"] = difference(model, reference)
    seen["leftovers"] = [name for name in os.listdir(out) if name.startswith(".")]
    torch.save(seen, os.path.join(out, f"rank{rank}.pt"))
    fabric.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
