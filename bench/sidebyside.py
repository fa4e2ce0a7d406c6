"""What the GPU benchmarks share: loops timed in alternating rounds in one process, each loop's peak memory,
the card's name, and the result rows that bench/gpu_table.py prints as one table.

A loop is a function that trains `steps` steps. Each round runs one chunk of every loop, in an order that
rotates from round to round, with the device synchronised at the two ends of each chunk only. Per loop:
the steps/s of every chunk, and its peak memory = what it holds between steps (parameters, optimizer state,
measured when it was built) + the most its steps allocated on top of that.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

DRY_RUN_ENV = "TREADLE_BENCH_DRY_RUN"


@dataclass
class Loop:
    name: str
    run: Callable[[int], None]
    resident_bytes: int = 0  # memory the loop holds between steps (set by `build`)
    rates: list[float] = field(default_factory=list)
    step_peak_bytes: int = 0  # the most one chunk allocated above what was allocated when it started

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + self.step_peak_bytes

    @property
    def best(self) -> float:
        return max(self.rates)


def dry_run() -> bool:
    return os.environ.get(DRY_RUN_ENV, "") not in ("", "0")


def card(device: torch.device) -> str:
    """The device's name as the figures should carry it, e.g. 'NVIDIA H100 80GB HBM3'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def build(name: str, device: torch.device, make: Callable[[], Callable[[int], None]], warmup: int) -> Loop:
    """Make a loop and run its warm-up steps; what it still holds afterwards is its resident memory."""
    synchronize(device)
    before = allocated(device)
    run = make()
    run(warmup)  # creates optimizer state, picks kernels, compiles
    synchronize(device)
    return Loop(name, run, resident_bytes=allocated(device) - before)


def time_rounds(loops: list[Loop], device: torch.device, rounds: int, steps: int) -> None:
    """Run `rounds` rounds of one `steps`-step chunk per loop, rotating the order; fills rates and peaks."""
    cuda = device.type == "cuda"
    for round_index in range(rounds):
        shift = round_index % len(loops)
        for loop in loops[shift:] + loops[:shift]:
            synchronize(device)
            if cuda:
                start_bytes = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            loop.run(steps)
            synchronize(device)
            loop.rates.append(steps / (time.perf_counter() - start))
            if cuda:
                loop.step_peak_bytes = max(
                    loop.step_peak_bytes, torch.cuda.max_memory_allocated(device) - start_bytes
                )


def paired(loop: Loop, raw: Loop) -> tuple[float, float, float]:
    """Median and quartiles over rounds of `loop`'s steps/s against `raw`'s in the same round."""
    ratios = sorted(ours / base for ours, base in zip(loop.rates, raw.rates, strict=True))
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")  # few rounds: no extrapolation
    return statistics.median(ratios), low, high


def mib(value: int) -> float:
    return value / 2**20


class Rows:
    """Result rows, one JSON object a line, appended to `path` (the table is printed from them at the end)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def add(self, **row: Any) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        print("ROW " + json.dumps(clean), flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(json.dumps(clean) + "\n")

    def compare(
        self,
        part: str,
        loop: Loop,
        raw: Loop,
        device: torch.device,
        target: float | None,
        unit: str = "steps/s",
        per_step: float = 1.0,
        note: str = "",
        **extra: Any,
    ) -> None:
        """A row: `loop` against `raw`, both timed in the same rounds (`per_step` turns steps into `unit`)."""
        median, low, high = paired(loop, raw)
        cuda = device.type == "cuda"
        self.add(
            part=part,
            loop=loop.name,
            baseline=raw.name,
            card=card(device),
            unit=unit,
            raw=raw.best * per_step,
            value=loop.best * per_step,
            ratio=median,
            ratio_low=low,
            ratio_high=high,
            best_ratio=loop.best / raw.best,
            target=target,
            peak_raw_mib=mib(raw.peak_bytes) if cuda else None,
            peak_mib=mib(loop.peak_bytes) if cuda else None,
            note=note,
            **extra,
        )
