"""Two-rank DDP on CPU: treadle's loop vs the same hand-written torch DDP loop, side by side in one run.

The loops share the process group, the model shape, the data and the step count; they run in short chunks
whose order rotates every round, so that a noisy neighbour slows all of them alike. Each loop has its own
DDP model, so each pays for the same gradient all-reduce. The model is small (about 3 ms a step) so that a per-step cost of
treadle would show. A second copy of the hand-written loop ("torch again") measures the noise floor: two
identical loops differ by that much here. Reported per loop: median and best steps/s, median CPU time per
step, and the median over rounds of its steps/s against the torch chunk of the same round, with quartiles.
Target: treadle >= 0.97x.

    python bench/bench_ddp.py                      # 2 ranks via fabric.launch(), about 40 s on 2 cores
    python bench/bench_ddp.py --width 64 --batch-size 16 --rounds 50   # tinier steps, noisier on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from treadle import Fabric


def make_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
    )


def make_batches(
    width: int, batch_size: int, rank: int, count: int = 16
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(rank)
    return [
        (torch.randn(batch_size, width, generator=generator), torch.randn(batch_size, 1, generator=generator))
        for _ in range(count)
    ]


def torch_loop(width: int, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[int], None]:
    model = DistributedDataParallel(make_model(width))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def run(steps: int) -> None:
        for step in range(steps):
            x, y = batches[step % len(batches)]
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return run


def treadle_loop(
    fabric: Fabric, width: int, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> Callable[[int], None]:
    model = make_model(width)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.01))

    def run(steps: int) -> None:
        for step in range(steps):
            x, y = batches[step % len(batches)]
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()

    return run


def timed(fabric: Fabric, run: Callable[[int], None], steps: int) -> tuple[float, float]:
    """Steps per second (wall clock, the slower rank decides) and CPU microseconds per step (mean of ranks)."""
    fabric.barrier()
    start, cpu_start = time.perf_counter(), time.process_time()
    run(steps)
    cpu = time.process_time() - cpu_start
    fabric.barrier()
    wall = time.perf_counter() - start
    cpu_per_step = fabric.all_reduce(torch.tensor(cpu / steps * 1e6, dtype=torch.float64), reduce_op="mean")
    return steps / wall, float(cpu_per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per chunk (default 40)")
    parser.add_argument("--rounds", type=int, default=30, help="chunks of each loop (default 30)")
    parser.add_argument("--width", type=int, default=256, help="hidden width of the MLP (default 256)")
    parser.add_argument("--batch-size", type=int, default=64, help="per rank (default 64)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # two ranks share the cores; more threads per rank only contend
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) >= 2:
        # One core per rank, set before the process group's threads exist so they inherit it: without it
        # the scheduler migrates six or more threads across two cores and the chunks vary by +-15%.
        os.sched_setaffinity(0, {cores[fabric.global_rank % len(cores)]})
    fabric.launch()
    batches = make_batches(args.width, args.batch_size, fabric.global_rank)
    loops = {
        "torch": torch_loop(args.width, batches),
        "treadle": treadle_loop(fabric, args.width, batches),
        # The same hand-written loop again: how far two identical loops differ here is the noise floor.
        "torch again": torch_loop(args.width, batches),
    }
    for run in loops.values():
        run(20)  # warm-up: DDP builds its buckets on the first backward
    rates: dict[str, list[float]] = {name: [] for name in loops}
    cpu: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for round_index in range(args.rounds):
        shift = round_index % len(names)  # rotate the order so no loop always runs first
        for name in names[shift:] + names[:shift]:
            rate, cpu_per_step = timed(fabric, loops[name], args.steps)
            rates[name].append(rate)
            cpu[name].append(cpu_per_step)

    if fabric.is_global_zero:
        print(
            f"2-rank DDP on CPU (gloo), MLP width {args.width}, batch {args.batch_size} per rank, "
            f"{args.rounds} rounds x {args.steps} steps per loop, order rotated each round"
        )
        print(
            f"{'loop':<13}{'median steps/s':>16}{'best steps/s':>14}{'CPU us/step':>13}{'ratio to torch':>24}"
        )
        for name in names:
            ratios = [ours / theirs for ours, theirs in zip(rates[name], rates["torch"], strict=True)]
            low, middle, high = statistics.quantiles(ratios, n=4)
            spread = "" if name == "torch" else f"{middle:.3f}x [{low:.2f}-{high:.2f}]"
            print(
                f"{name:<13}{statistics.median(rates[name]):>16.1f}{max(rates[name]):>14.1f}"
                f"{statistics.median(cpu[name]):>13.1f}{spread:>24}"
            )
        print("ratio: median over rounds of steps/s against torch's chunk of the same round [quartiles]")
        print("target: treadle >= 0.97x; 'torch again' shows how much two identical loops differ here")


if __name__ == "__main__":
    main()
