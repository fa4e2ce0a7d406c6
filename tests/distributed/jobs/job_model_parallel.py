"""Two ranks of ModelParallelStrategy on CPU (gloo), in one of two layouts, against one unsplit model.

Usage: python job_model_parallel.py MODE OUT_DIR [CHECKPOINT]. MODE "tp" splits every layer over both ranks
(tensor_parallel_size=2); "dp" keeps whole layers and shards them with FSDP2 (data_parallel_size=2) and, when
CHECKPOINT is given, first loads that sharded folder (written by the "tp" job). Each rank saves what it
observed to OUT_DIR/rank<R>.pt; the test asserts.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from treadle import Fabric
from treadle.checkpoint import save_checkpoint
from treadle.strategies import FSDPStrategy, ModelParallelStrategy

WIDTH, HEADS, VOCAB = 16, 4, 32


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wq, self.wk, self.wv = (nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(3))
        self.wo = nn.Linear(WIDTH, WIDTH, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds HEADS / tp of them.
        q, k, v = (
            w(x).view(batch, length, -1, WIDTH // HEADS).transpose(1, 2) for w in (self.wq, self.wk, self.wv)
        )
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(batch, length, -1))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.attention = Attention()
        self.w1, self.w2 = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.w2(torch.relu(self.w1(self.norm2(x))))


class Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def tensor_parallel(model: nn.Module, device_mesh: Any) -> nn.Module:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(),
        "w1": ColwiseParallel(),
        "w2": RowwiseParallel(),
    }
    for block in model.blocks:  # type: ignore[union-attr]
        parallelize_module(block, device_mesh["tensor_parallel"], plan)
    return model


def data_parallel(model: nn.Module, device_mesh: Any) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:  # type: ignore[union-attr]
        fully_shard(block, mesh=device_mesh["data_parallel"])
    fully_shard(model, mesh=device_mesh["data_parallel"])
    return model


def tokens(seed: int, rows: int = 4) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, 9), generator=torch.Generator().manual_seed(seed))


def loss_of(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


def full(tensor: Any) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def difference(model: nn.Module, reference: nn.Module) -> float:
    ours = {name: full(value) for name, value in model.state_dict().items()}
    return max((ours[name] - value).abs().max().item() for name, value in reference.state_dict().items())


def main(mode: str, out: str, loaded: str | None) -> None:
    tp = mode == "tp"
    strategy: Any
    if mode == "fsdp":  # the plain FSDP strategy, for checkpoints written by the model-parallel one
        strategy = FSDPStrategy(shard_modules={Block}, timeout=timedelta(seconds=30))
    else:
        strategy = ModelParallelStrategy(
            tensor_parallel if tp else data_parallel,
            data_parallel_size=1 if tp else 2,
            tensor_parallel_size=2 if tp else 1,
            timeout=timedelta(seconds=30),
        )
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy)
    fabric.launch()
    rank = fabric.global_rank
    seen: dict[str, Any] = {"rank": rank}
    if mode != "fsdp":
        mesh = strategy.device_mesh
        seen["mesh"] = [mesh.mesh_dim_names, tuple(mesh.shape)]

    torch.manual_seed(0)
    reference = Transformer()
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=0.01)
    start = os.path.join(out, "start.pt")
    if rank == 0:
        save_checkpoint(start, {"model": reference})
    fabric.barrier()

    # A meta-device model: setup splits it, allocates each rank's shards and initialises them.
    with fabric.init_module(empty_init=True):
        model = Transformer()
    seen["meta_before_setup"] = all(p.is_meta for p in model.parameters())
    model = fabric.setup(model)
    seen["materialized"] = all(
        not p.is_meta and bool(torch.isfinite(full(p)).all()) for p in model.parameters()
    )
    seen["dtensor_parameters"] = sorted(
        name for name, p in model.named_parameters() if type(p).__name__ == "DTensor"
    )
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=0.01))
    fabric.load(start, {"model": model})  # one process's full file into the split model
    seen["start_difference"] = difference(model, reference)

    # Training: each tensor-parallel group computes the same samples; data-parallel ranks split the batch.
    losses, reference_losses, norms = [], [], []
    for step in range(4):
        batch = tokens(step, rows=4)
        mine = batch if tp else batch[2 * rank : 2 * rank + 2]
        loss = loss_of(model, mine)
        fabric.backward(loss)
        norms.append(fabric.clip_gradients(model, optimizer, max_norm=0.5).item())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(fabric.all_reduce(loss.detach(), reduce_op="mean").item())
        reference_loss = loss_of(reference, batch)
        reference_loss.backward()
        norms[-1] -= nn.utils.clip_grad_norm_(reference.parameters(), 0.5).item()
        reference_optimizer.step()
        reference_optimizer.zero_grad()
        reference_losses.append(reference_loss.item())
    seen["loss_differences"] = [abs(a - b) for a, b in zip(losses, reference_losses, strict=True)]
    seen["norm_differences"] = [abs(n) for n in norms]
    seen["train_difference"] = difference(model, reference)

    # Gradient accumulation without the data-parallel reduction until the last micro-batch.
    batch = tokens(10, rows=8)
    micro = [
        batch[4 * i : 4 * i + 4] if tp else batch[4 * i + 2 * rank : 4 * i + 2 * rank + 2] for i in range(2)
    ]
    with fabric.no_backward_sync(model, enabled=True):
        fabric.backward(loss_of(model, micro[0]) / 2)
    fabric.backward(loss_of(model, micro[1]) / 2)
    loss_of(reference, batch).backward()
    pairs = zip(model.parameters(), reference.parameters(), strict=True)
    seen["accumulated_grad_difference"] = max((full(a.grad) - b.grad).abs().max().item() for a, b in pairs)  # type: ignore[union-attr]
    optimizer.zero_grad()
    reference_optimizer.zero_grad()

    # Data: split over the data-parallel ranks only.
    loader = fabric.setup_dataloaders(DataLoader(list(range(16)), batch_size=4))
    seen["samples"] = [int(i) for batch in loader for i in batch]

    # Checkpoints: a sharded folder (read later by other layouts and by one process) and one full file.
    if loaded is not None:
        fabric.load(loaded, {"model": model, "optimizer": optimizer})
        saved = torch.load(os.path.join(out, "..", "tp", "weights.pt"), weights_only=True)
        ours = {name: full(value) for name, value in model.state_dict().items()}
        seen["resharded_difference"] = max((ours[n] - v).abs().max().item() for n, v in saved.items())
        moments = {n: full(optimizer.state[p]["exp_avg"]) for n, p in model.named_parameters()}
        saved_moments = torch.load(os.path.join(out, "..", "tp", "moments.pt"), weights_only=True)
        seen["resharded_moment_difference"] = max(
            (moments[n] - v).abs().max().item() for n, v in saved_moments.items()
        )
    state = {"model": model, "optimizer": optimizer, "step": 4}
    fabric.save(os.path.join(out, "sharded"), state)
    weights = {name: full(value).clone() for name, value in model.state_dict().items()}
    moments = {n: full(optimizer.state[p]["exp_avg"]).clone() for n, p in model.named_parameters()}
    if rank == 0:
        torch.save(weights, os.path.join(out, "weights.pt"))
        torch.save(moments, os.path.join(out, "moments.pt"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    state["step"] = 0
    fabric.load(os.path.join(out, "sharded"), state)
    restored = {name: full(value) for name, value in model.state_dict().items()}
    seen["sharded_round_trip"] = [all(torch.equal(restored[n], v) for n, v in weights.items()), state["step"]]
    # In the background: the folder appears once every rank's shards are written, with this moment's state.
    background = os.path.join(out, "background")
    fabric.save(background, {"model": model, "optimizer": optimizer, "step": 5}, async_save=True)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # training goes on
    fabric.wait_for_saves()
    fabric.load(background, state)
    restored = {name: full(value) for name, value in model.state_dict().items()}
    seen["background_round_trip"] = [all(torch.equal(restored[n], v) for n, v in weights.items()), state["step"]]
    seen["leftovers"] = sorted(name for name in os.listdir(out) if name.startswith("."))
    if mode == "fsdp":
        strategy.state_dict_type = "full"
    else:
        strategy.save_distributed_checkpoint = False
    fabric.save(os.path.join(out, "full.pt"), {"model": model, "optimizer": optimizer})
    torch.save(seen, os.path.join(out, f"rank{rank}.pt"))
    fabric.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
