"""Tensor parallel + data parallel (FSDP2) on a 2D device mesh, with ModelParallelStrategy.

The model is a small decoder-only transformer. ``parallelize`` is yours: it splits each block's attention
heads and feed-forward over the "tensor_parallel" ranks (column-wise in, row-wise out, so one all-reduce
per sub-layer), shards whole blocks over the "data_parallel" ranks with ``fully_shard``, and computes the
loss on the vocabulary-sharded logits without gathering them (``loss_parallel``). The model is created on
the meta device, so no rank ever holds the whole of it.

Run on CPU:    python examples/tensor_parallel.py                       (2 processes, TP=2)
               python examples/tensor_parallel.py --devices 4 --tp 2    (DP=2 x TP=2)
Run on GPUs:   python examples/tensor_parallel.py --accelerator cuda --devices 8 --tp 4
Afterwards:    treadle consolidate checkpoints/tensor_parallel model.pt   (one file, any layout)
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from treadle import Fabric
from treadle.strategies import ModelParallelStrategy


class Config:
    vocab_size = 256
    width = 64
    heads = 4
    layers = 2
    context = 32


class RMSNorm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Attention(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.head_dim = config.width // config.heads
        self.query, self.key, self.value, self.out = (
            nn.Linear(config.width, config.width, bias=False) for _ in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        # view(..., -1, head_dim): after column-wise splitting, a rank holds heads / tp of the heads.
        q, k, v = (
            proj(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        hidden = 4 * config.width
        self.gate = nn.Linear(config.width, hidden, bias=False)
        self.up = nn.Linear(config.width, hidden, bias=False)
        self.down = nn.Linear(hidden, config.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.attention_norm, self.attention = RMSNorm(config.width), Attention(config)
        self.feed_forward_norm, self.feed_forward = RMSNorm(config.width), FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.feed_forward_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.width)
        self.positions = nn.Embedding(config.context, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = RMSNorm(config.width)
        self.output = nn.Linear(config.width, config.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tokens(tokens) + self.positions(positions)
        for block in self.blocks:
            x = block(x)
        return self.output(self.norm(x))

    def init_weights(self) -> None:
        """GPT-2's scheme: small normal weights, residual projections scaled down by depth."""
        for name, parameter in self.named_parameters():
            if name.endswith(("attention.out.weight", "feed_forward.down.weight")):
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * len(self.blocks)))
            elif parameter.ndim == 2:
                nn.init.normal_(parameter, std=0.02)


def parallelize(model: Transformer, device_mesh: torch.distributed.DeviceMesh) -> Transformer:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp_mesh, dp_mesh = device_mesh["tensor_parallel"], device_mesh["data_parallel"]
    if tp_mesh.size() > 1:
        block_plan = {
            "attention.query": ColwiseParallel(),
            "attention.key": ColwiseParallel(),
            "attention.value": ColwiseParallel(),
            "attention.out": RowwiseParallel(),
            "feed_forward.gate": ColwiseParallel(),
            "feed_forward.up": ColwiseParallel(),
            "feed_forward.down": RowwiseParallel(),
        }
        for block in model.blocks:
            parallelize_module(block, tp_mesh, block_plan)
        # Logits stay split over the vocabulary; loss_parallel() computes cross-entropy on the shards.
        head = ColwiseParallel(input_layouts=Replicate(), output_layouts=Shard(-1), use_local_output=False)
        parallelize_module(model, tp_mesh, {"output": head})
    if dp_mesh.size() > 1:
        for block in model.blocks:
            fully_shard(block, mesh=dp_mesh)
        fully_shard(model, mesh=dp_mesh)
    return model


class RandomTokens(Dataset[torch.Tensor]):
    def __init__(self, config: Config, size: int = 512) -> None:
        generator = torch.Generator().manual_seed(0)
        # A learnable pattern: each sequence counts up from a random start.
        starts = torch.randint(0, config.vocab_size, (size, 1), generator=generator)
        self.data = (starts + torch.arange(config.context + 1)) % config.vocab_size

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel size; the rest is data parallel")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--checkpoint", default="checkpoints/tensor_parallel")
    args = parser.parse_args()

    strategy = ModelParallelStrategy(parallelize, tensor_parallel_size=args.tp)
    fabric = Fabric(accelerator=args.accelerator, devices=args.devices, strategy=strategy)
    fabric.launch()
    fabric.seed_everything(42)
    config = Config()
    with fabric.init_module(empty_init=True):
        model = Transformer(config)  # on the meta device: no memory yet
    model = fabric.setup(model)  # split, then each rank allocates its shards
    model.init_weights()
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=3e-3))
    # The ranks of one tensor-parallel group get the same batches; data-parallel ranks different ones.
    loader = fabric.setup_dataloaders(DataLoader(RandomTokens(config), batch_size=8, shuffle=True))
    dp, tp = strategy.mesh_shape()
    parameters = sum(p.numel() for p in model.parameters())
    fabric.print(f"mesh: {dp} data parallel x {tp} tensor parallel; {parameters} parameters")

    from torch.distributed.tensor.parallel import loss_parallel

    for iteration, batch in zip(range(args.iterations), loader, strict=False):  # the loader is longer
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = model(inputs)
        with loss_parallel():
            loss = nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size), targets.reshape(-1))
            fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad()
        if iteration % 5 == 0 or iteration == args.iterations - 1:
            value = loss.full_tensor() if hasattr(loss, "full_tensor") else loss  # a DTensor under TP
            fabric.print(f"iteration {iteration:3d}  loss {value.item():.4f}")

    fabric.save(args.checkpoint, {"model": model, "optimizer": optimizer, "iteration": iteration})
    fabric.print(f"sharded checkpoint written to {args.checkpoint}; `treadle consolidate` makes it one file")


if __name__ == "__main__":
    main()
