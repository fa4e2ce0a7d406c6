"""Why FSDP2 at world size 1 trains slower than DDP at world size 1: variants side by side, with a breakdown.

The model is bench/gpu_distributed.py's TinyGPT (6 blocks of width 512, batch 16 x 256 tokens, bf16-mixed,
AdamW), where the first GPU session measured 53.2 steps/s under DDP and 23.5 under FSDP2. All variants
live in one process (one process group of world size 1: nccl on CUDA, gloo on CPU) and run in alternating
rounds (bench/sidebyside.py):

  ddp raw                     torch DDP, autocast, hand-written
  ddp treadle                 Fabric(strategy=DDPStrategy())
  fsdp raw                    fully_shard per Block, then the root; MixedPrecisionPolicy(bf16, fp32); no
                              autocast (what an FSDP2 user writes)
  fsdp raw + autocast         the same inside torch.autocast, as treadle's bf16-mixed does on top of FSDP
  fsdp raw, no reshard        reshard_after_forward=False (no second all-gather in backward)
  fsdp treadle                FSDPStrategy(shard_modules={Block}), the first session's configuration
  fsdp treadle, no reshard    ... reshard_after_forward=False
  fsdp treadle, one group     FSDPStrategy() without shard_modules: one all-gather for the whole model
  fsdp treadle, fused AdamW   ... with AdamW(fused=True) (on CUDA), instead of foreach over DTensors

Per variant: steps/s, ratio to ddp raw, peak memory, and then a synchronised breakdown of the step
(forward, backward, optimizer, milliseconds) and, from torch.profiler, how busy the GPU was during the
step (the union of kernel times over the wall time: low means the host's work decides the speed). The
profiler's table of the costliest host operations of "fsdp treadle" and "ddp treadle" goes to the log.

    python bench/bench_fsdp_gpu.py --rows rows.jsonl          # on the GPU machine
    python bench/bench_fsdp_gpu.py --device cpu --tiny        # CPU dry run of the code paths (gloo)
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from gpt import Block, TinyGPT  # bench/gpt.py: this script's folder is on sys.path
from sidebyside import Loop, Rows, build, card, synchronize, time_rounds
from torch import nn
from torch.nn import functional as F

import treadle
from treadle.strategies.ddp import DDPStrategy
from treadle.strategies.fsdp import FSDPStrategy


@dataclass
class Step:
    """One training step in three phases, so the breakdown can synchronise between them."""

    forward: Callable[[], torch.Tensor]
    backward: Callable[[torch.Tensor], None]
    update: Callable[[], None]

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.backward(self.forward())
            self.update()


def sizes(tiny: bool) -> dict[str, int]:
    if tiny:
        return {"vocab": 64, "width": 32, "depth": 2, "heads": 2, "length": 16, "batch": 4}
    return {"vocab": 8192, "width": 512, "depth": 6, "heads": 8, "length": 256, "batch": 16}


def make_model(size: dict[str, int]) -> nn.Module:
    torch.manual_seed(0)
    return TinyGPT(size["vocab"], size["width"], size["depth"], size["heads"], size["length"])


def batch(size: dict[str, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, size["vocab"], (size["batch"], size["length"] + 1), generator=generator)
    data = data.to(device)
    return data[:, :-1], data[:, 1:]


def loss_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def adamw(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    # The first session's benchmark used AdamW's default (foreach on CUDA), which over FSDP's DTensor
    # parameters dispatches every foreach op through DTensor.
    return torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True if fused else None)


def autocast_or_not(device: torch.device, on: bool) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    if on:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def raw_step(
    kind: str, size: dict[str, int], device: torch.device, autocast: bool, reshard: bool = True
) -> Step:
    model = make_model(size).to(device)
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[device.index or 0] if device.type == "cuda" else None
        )
    else:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(model, mp_policy=policy, reshard_after_forward=reshard)
    optimizer = adamw(model, fused=False)
    inputs, targets = batch(size, device)
    context = autocast_or_not(device, autocast)

    def forward() -> torch.Tensor:
        with context():
            return loss_of(model(inputs), targets)

    def update() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Step(forward, lambda loss: loss.backward(), update)


def treadle_step(strategy: Any, size: dict[str, int], device: torch.device, fused: bool = False) -> Step:
    fabric = treadle.Fabric(accelerator=device.type, devices=1, strategy=strategy, precision="bf16-mixed")
    fabric.launch()
    model = make_model(size)
    model, optimizer = fabric.setup(model, adamw(model, fused))
    inputs, targets = batch(size, fabric.device)

    def update() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Step(lambda: loss_of(model(inputs), targets), fabric.backward, update)


def variants(size: dict[str, int], device: torch.device) -> dict[str, Callable[[], Step]]:
    timeout = timedelta(minutes=2)
    cuda = device.type == "cuda"
    found: dict[str, Callable[[], Step]] = {
        "ddp raw": lambda: raw_step("ddp", size, device, autocast=True),
        "ddp treadle": lambda: treadle_step(DDPStrategy(timeout=timeout), size, device),
        "fsdp raw": lambda: raw_step("fsdp", size, device, autocast=False),
        "fsdp raw + autocast": lambda: raw_step("fsdp", size, device, autocast=True),
        "fsdp raw, no reshard": lambda: raw_step("fsdp", size, device, autocast=False, reshard=False),
        "fsdp treadle": lambda: treadle_step(
            FSDPStrategy(shard_modules={Block}, timeout=timeout), size, device
        ),
        "fsdp treadle, no reshard": lambda: treadle_step(
            FSDPStrategy(shard_modules={Block}, reshard_after_forward=False, timeout=timeout), size, device
        ),
        "fsdp treadle, one group": lambda: treadle_step(FSDPStrategy(timeout=timeout), size, device),
    }
    if cuda:  # fused AdamW is a CUDA kernel
        found["fsdp treadle, fused AdamW"] = lambda: treadle_step(
            FSDPStrategy(shard_modules={Block}, timeout=timeout), size, device, fused=True
        )
    return found


def keep(make: Callable[[], Step], steps: dict[str, Step], name: str) -> Callable[[], Callable[[int], None]]:
    """A loop maker for `build` that also files the Step it makes under `name`, for the breakdown."""

    def make_run() -> Callable[[int], None]:
        step = steps[name] = make()
        return step.run

    return make_run


def breakdown(step: Step, device: torch.device, steps: int) -> dict[str, float]:
    """Median milliseconds of forward, backward and optimizer, the device synchronised between them."""
    phases: dict[str, list[float]] = {"fwd_ms": [], "bwd_ms": [], "opt_ms": []}
    for _ in range(steps):
        synchronize(device)
        t0 = time.perf_counter()
        loss = step.forward()
        synchronize(device)
        t1 = time.perf_counter()
        step.backward(loss)
        synchronize(device)
        t2 = time.perf_counter()
        step.update()
        synchronize(device)
        t3 = time.perf_counter()
        for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            phases[name].append(seconds * 1000)
    return {name: statistics.median(values) for name, values in phases.items()}


def gpu_busy(step: Step, device: torch.device, steps: int, table: bool) -> float | None:
    """The fraction of the wall time in which some kernel ran, over `steps` profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step.run(steps)
        synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    if table:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    if device.type != "cuda":
        return None
    intervals = sorted(
        (event.time_range.start, event.time_range.end)
        for event in prof.events()
        if event.device_type == torch.autograd.DeviceType.CUDA
    )
    busy, reach = 0.0, float("-inf")
    for begin, end in intervals:  # length of the union of kernel intervals
        if end > reach:
            busy += end - max(begin, reach)
            reach = end
    return busy / wall_us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (for --device cpu dry runs)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per chunk")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--breakdown-steps", type=int, default=5)
    parser.add_argument("--rows", default=None, help="append the result rows (JSON lines) to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("bench_fsdp_gpu.py: no CUDA device; pass --device cpu --tiny for a dry run.")
            return 2
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    size = sizes(args.tiny)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
        timeout=timedelta(minutes=2),
    )
    name = card(device)
    print(
        f"FSDP2 vs DDP, world size 1 on {name}, torch {torch.__version__}: {size['depth']} blocks, width "
        f"{size['width']}, batch {size['batch']} x {size['length']}; {args.rounds} rounds x {args.steps} steps",
        flush=True,
    )
    steps: dict[str, Step] = {}
    loops: list[Loop] = []
    rows = Rows(args.rows)
    for loop_name, make in variants(size, device).items():
        try:
            loop = build(loop_name, device, keep(make, steps, loop_name), args.warmup)
            loops.append(loop)
        except Exception as error:
            message = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
            print(f"--- {loop_name} failed: {message}", flush=True)
            rows.add(part="FSDP2 vs DDP, world size 1", loop=loop_name, card=name, error=message)
    time_rounds(loops, device, args.rounds, args.steps)
    baseline = loops[0]
    by_name = {loop.name: loop for loop in loops}
    for loop in loops:
        step = steps[loop.name]
        phases = breakdown(step, device, args.breakdown_steps)
        show_table = loop.name in ("ddp treadle", "fsdp treadle")
        if show_table:
            print(f"--- torch.profiler, {loop.name}, {args.breakdown_steps} steps", flush=True)
        busy = gpu_busy(step, device, args.breakdown_steps, table=show_table)
        note = " ".join(f"{k[:3]} {v:.1f}" for k, v in phases.items()) + " ms"
        if busy is not None:
            note += f"; GPU busy {busy:.0%}"
        extra: dict[str, Any] = dict(phases, gpu_busy=busy)
        rows.compare("FSDP2 vs DDP, world size 1", loop, baseline, device, None, note=note, **extra)
    # What treadle itself adds on top of FSDP2: its loop against the hand-written one that does the same
    # (autocast over FSDP's mixed-precision policy), and against the plain FSDP2 loop.
    for ours, theirs, target in (
        ("fsdp treadle", "fsdp raw + autocast", 0.99),
        ("fsdp treadle", "fsdp raw", None),
        ("fsdp treadle, no reshard", "fsdp raw, no reshard", None),
        ("ddp treadle", "ddp raw", 0.99),
    ):
        if ours in by_name and theirs in by_name:
            rows.compare("FSDP2/DDP: treadle vs raw", by_name[ours], by_name[theirs], device, target)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
