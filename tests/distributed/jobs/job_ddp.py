"""Two ranks of DDP on CPU (started by fabric.launch()), checking training, collectives, data and checkpoints.

Usage: python job_ddp.py OUT_DIR. Each rank saves what it observed to OUT_DIR/rank<R>.pt; the test asserts.
Fabric.print writes one marker line, so the test can count how many ranks printed it.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from treadle import Fabric, rank_zero_only
from treadle.strategies.ddp import DDPStrategy


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_train_start(self) -> None:
        self.calls.append("every rank")

    @rank_zero_only
    def on_train_end(self) -> None:
        self.calls.append("rank zero only")


class WholeRankZero:
    rank_zero_only = True

    def __init__(self) -> None:
        self.calls = 0

    def on_train_end(self) -> None:
        self.calls += 1


class Broken:
    def state_dict(self) -> dict[str, Any]:
        raise RuntimeError("cannot be saved")


def batch(seed: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 4, generator=generator), torch.randn(rows, 2, generator=generator)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]  # type: ignore[union-attr]


def max_difference(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
    return max((a - b).abs().max().item() for a, b in zip(first, second, strict=True))


def main(out: str) -> None:
    recorder, whole = Recorder(), WholeRankZero()
    fabric = Fabric(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(timeout=timedelta(seconds=30)),
        callbacks=[recorder, whole],
    )
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    seen: dict[str, Any] = {"rank": rank, "world_size": world}

    # Gradients: each rank has half of the batch; DDP's average equals one process on the whole batch.
    reference = make_model()
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    inputs, targets = batch(1, 8)
    mine = slice(4 * rank, 4 * rank + 4)
    fabric.backward(nn.functional.mse_loss(model(inputs[mine]), targets[mine]))
    nn.functional.mse_loss(reference(inputs), targets).backward()
    seen["grad_difference"] = max_difference(grads(model), grads(reference))
    optimizer.step()
    optimizer.zero_grad()
    gathered = fabric.all_gather([p.detach() for p in model.parameters()])
    seen["params_identical_across_ranks"] = all(torch.equal(g[0], g[1]) for g in gathered)

    # no_backward_sync: two micro-batches per rank (the first without sync) equal one batch of 16.
    accumulate = make_model()
    accumulate_optimizer = torch.optim.SGD(accumulate.parameters(), lr=0.1)
    accumulate, accumulate_optimizer = fabric.setup(accumulate, accumulate_optimizer)
    reference = make_model()
    inputs, targets = batch(2, 16)
    micro = [slice(8 * rank + 4 * i, 8 * rank + 4 * i + 4) for i in range(2)]
    with fabric.no_backward_sync(accumulate, enabled=True):
        fabric.backward(nn.functional.mse_loss(accumulate(inputs[micro[0]]), targets[micro[0]]) / 2)
    unsynced = fabric.all_gather(accumulate.module[0].weight.grad)
    seen["unsynced_grads_differ"] = not torch.equal(unsynced[0], unsynced[1])
    with fabric.no_backward_sync(accumulate, enabled=False):
        fabric.backward(nn.functional.mse_loss(accumulate(inputs[micro[1]]), targets[micro[1]]) / 2)
    nn.functional.mse_loss(reference(inputs), targets).backward()
    seen["accumulated_grad_difference"] = max_difference(grads(accumulate), grads(reference))

    # Collectives.
    fabric.barrier("start of collectives")
    value = torch.tensor(float(rank + 1))
    seen["all_reduce"] = {
        op: fabric.all_reduce(value, reduce_op=op).item() for op in ("sum", "mean", "max", "min")
    }
    seen["all_reduce_int_mean"] = fabric.all_reduce(torch.tensor(rank + 1), reduce_op="mean").item()
    seen["all_reduce_number"] = fabric.all_reduce(rank + 1, reduce_op="sum").item()
    seen["all_reduce_nested"] = fabric.all_reduce({"a": [value]}, reduce_op="sum")["a"][0].item()
    seen["input_untouched"] = value.item() == float(rank + 1)
    group = torch.distributed.new_group([0, 1])
    seen["group"] = [
        fabric.all_reduce(value, group=group, reduce_op="mean").item(),
        fabric.all_gather(value, group=group).tolist(),
    ]
    seen["broadcast"] = fabric.broadcast({"from": rank, "items": [rank]}, src=1)
    nested = fabric.all_gather({"a": torch.tensor([rank, rank]), "b": (torch.tensor(rank * 10.0),)})
    seen["all_gather_nested"] = {"a": nested["a"].tolist(), "b": nested["b"][0].tolist()}
    leaf = torch.tensor([1.0, 2.0], requires_grad=True)
    (fabric.all_gather(leaf * (rank + 1), sync_grads=True).sum()).backward()
    seen["sync_grads"] = leaf.grad.tolist()  # type: ignore[union-attr]
    seen["any"] = [fabric.all_reduce_bool(rank == 1, "any"), fabric.all_reduce_bool(False, "any")]
    seen["all"] = [fabric.all_reduce_bool(rank == 1, "all"), fabric.all_reduce_bool(True, "all")]
    marker = os.path.join(out, "first.txt")
    with fabric.rank_zero_first():
        if rank == 0:
            with open(marker, "w") as file:
                file.write("rank 0 was here")
        seen["rank_zero_was_first"] = os.path.exists(marker)
    fabric.print("PRINTED-ONCE")

    # Data: a DistributedSampler goes in; shuffle, drop_last and batch size are kept; epochs reshuffle.
    loader = fabric.setup_dataloaders(DataLoader(list(range(10)), batch_size=2, shuffle=True))
    epochs = [[int(i) for b in loader for i in b] for _ in range(2)]
    seen["epochs"] = epochs
    seen["sampler"] = isinstance(loader.sampler, DistributedSampler) and type(loader.sampler).__name__
    seen["batch_size"] = loader.batch_size
    odd = fabric.setup_dataloaders(DataLoader(list(range(11)), batch_size=2, shuffle=False, drop_last=True))
    seen["drop_last"] = [odd.sampler.drop_last, [int(i) for b in odd for i in b]]
    alone = fabric.setup_dataloaders(DataLoader(list(range(6)), batch_size=3), use_distributed_sampler=False)
    seen["not_distributed"] = [int(i) for b in alone for i in b]
    # Ranks seeded apart still shuffle alike (rank 0's seed), so their shares stay disjoint.
    fabric.seed_everything(100 + rank, verbose=False)
    apart = fabric.setup_dataloaders(DataLoader(list(range(40)), batch_size=4, shuffle=True))
    seen["seeded_apart"] = [int(i) for b in apart for i in b]

    # Checkpoints: rank 0 writes, everyone loads; a failed save replaces nothing and fails on every rank.
    path = os.path.join(out, "checkpoint.pt")
    fabric.save(path, {"model": model, "optimizer": optimizer, "step": 5})
    saved = [p.detach().clone() for p in model.parameters()]
    seen["files_after_save"] = sorted(os.listdir(out))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    state: dict[str, Any] = {"model": model, "optimizer": optimizer, "step": 0}
    fabric.load(path, state)
    seen["loaded_equal"] = all(torch.equal(a, b) for a, b in zip(saved, model.parameters(), strict=True))
    seen["loaded_step"] = state["step"]
    before = os.path.getmtime(path), os.path.getsize(path)
    try:
        fabric.save(path, {"model": model, "broken": Broken()})
        seen["failed_save"] = "no error"
    except RuntimeError as error:
        seen["failed_save"] = str(error)
    seen["after_failed_save"] = [
        (os.path.getmtime(path), os.path.getsize(path)) == before,
        sorted(os.listdir(out)),
    ]

    # Callbacks: the Fabric knows its rank after launch; rank-zero-only hooks run on rank 0 only.
    fabric.call("on_train_start")
    fabric.call("on_train_end")
    seen["callbacks"] = [recorder.calls, whole.calls]
    torch.save(seen, os.path.join(out, f"rank{rank}.pt"))
    fabric.barrier("end")


if __name__ == "__main__":
    main(sys.argv[1])
