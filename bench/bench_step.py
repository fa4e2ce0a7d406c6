"""Per-step overhead: a Fabric loop vs the same hand-written PyTorch loop, side by side in one run.

The model is deliberately tiny (two hidden layers of width 32, batch 8, SGD) so that any per-step cost of
the library shows. Each round runs one chunk of every loop, in an order that rotates from round to round;
the ratio is the median over rounds of treadle's steps/s against the raw loop's chunk of the same round,
with quartiles. Pairing chunks of one round cancels slow drifts of a shared machine, and the median
ignores the chunks that another process interrupted. Target: treadle >= 0.97x the raw loop's steps/s.

    python bench/bench_step.py                 # cpu, 32-true and bf16-mixed (cuda too when available)
    python bench/bench_step.py --devices cpu --rounds 15
    python bench/bench_step.py --devices cuda --rows rows.jsonl   # also append rows for bench/gpu_table.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import treadle

STEPS_PER_CHUNK = 100


class NoOp:
    def on_train_batch_end(self, loss: Any, output: Any) -> None:
        pass


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))


def make_data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 32, generator=generator).to(device), torch.randn(8, 1, generator=generator).to(
        device
    )


def raw_loop(device: torch.device, precision: str) -> Callable[[int], None]:
    model = make_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = make_data(device)
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if precision == "bf16-mixed"
        else contextlib.nullcontext
    )

    def run(steps: int) -> None:
        for _ in range(steps):
            with autocast():
                out = model(x)
            loss = nn.functional.mse_loss(out.float(), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    return run


def fabric_loop(fabric_cls: Any, device: torch.device, precision: str) -> Callable[[int], None]:
    fabric = fabric_cls(
        accelerator=device.type, devices=1, precision=precision, callbacks=[NoOp() for _ in range(4)]
    )
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=1e-3))
    x, y = make_data(fabric.device)

    def run(steps: int) -> None:
        for _ in range(steps):
            out = model(x)
            loss = nn.functional.mse_loss(out, y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            fabric.call("on_train_batch_end", loss=loss, output=out)

    return run


def steps_per_second(
    loops: dict[str, Callable[[int], None]], device: torch.device, rounds: int, steps: int = STEPS_PER_CHUNK
) -> dict[str, list[float]]:
    """Steps/s of every loop in every round, `steps` steps per chunk."""
    for run in loops.values():  # warm-up: allocator, autograd graph caches, dispatch plans
        run(steps)
    names = list(loops)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loops[name](steps)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(steps / (time.perf_counter() - start))
    return rates


def best_ratio(rates: dict[str, list[float]], name: str) -> str:
    """`name`'s best chunk against the raw loop's best chunk."""
    return f"{max(rates[name]) / max(rates['raw']):.3f}x"


def paired_ratio(rates: dict[str, list[float]], name: str) -> str:
    """Median and quartiles over rounds of `name`'s steps/s against the raw loop's in the same round."""
    ratios = sorted(ours / raw for ours, raw in zip(rates[name], rates["raw"], strict=True))
    low, _, high = statistics.quantiles(ratios, n=4)
    return f"{statistics.median(ratios):.3f}x [{low:.3f}-{high:.3f}]"


def row(device_name: str, precision: str, rates: dict[str, list[float]], name: str) -> dict[str, object]:
    """The result row of `name` against the raw loop, as bench/gpu_table.py prints it."""
    ratios = sorted(ours / raw for ours, raw in zip(rates[name], rates["raw"], strict=True))
    low, _, high = statistics.quantiles(ratios, n=4)
    device = torch.device(device_name)
    return {
        "part": f"tiny-model step {precision}",
        "loop": name,
        "baseline": "raw",
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "unit": "steps/s",
        "raw": max(rates["raw"]),
        "value": max(rates[name]),
        "ratio": statistics.median(ratios),
        "ratio_low": low,
        "ratio_high": high,
        "best_ratio": max(rates[name]) / max(rates["raw"]),
        "target": 0.97 if name == "treadle" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="*", default=None, help="cpu and/or cuda (default: all available)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=STEPS_PER_CHUNK, help="steps per chunk")
    parser.add_argument("--rows", default=None, help="append the result rows (JSON lines) to this file")
    args = parser.parse_args()
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    torch.set_num_threads(1)  # one thread: a tiny model is faster so, and the comparison is steadier
    try:
        from lightning.fabric import Fabric as LightningFabric
    except ImportError:
        LightningFabric = None
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        for precision in ("32-true", "bf16-mixed"):
            loops = {
                "raw": raw_loop(device, precision),
                "treadle": fabric_loop(treadle.Fabric, device, precision),
            }
            if LightningFabric is not None:
                loops["lightning"] = fabric_loop(LightningFabric, device, precision)
            rates = steps_per_second(loops, device, args.rounds, args.steps)
            rows.append((device_name, precision, rates))
    if args.rows:
        with open(args.rows, "a", encoding="utf-8") as file:
            for device_name, precision, rates in rows:
                for name in rates:
                    if name != "raw":
                        file.write(json.dumps(row(device_name, precision, rates, name)) + "\n")
    cards = {d: torch.cuda.get_device_name(torch.device(d)) for d in devices if d.startswith("cuda")}
    print(
        f"torch {torch.__version__}; {args.rounds} rounds of one {args.steps}-step chunk per loop"
        + "".join(f"; {d}: {name}" for d, name in cards.items())
    )
    header = f"{'device':<7}{'precision':<12}{'raw steps/s':>13}{'treadle':>9}{'best':>8}{'paired [quartiles]':>25}"
    if LightningFabric is not None:
        header += f"{'lightning':>11}{'best':>8}{'paired [quartiles]':>25}"
    print(header)
    for device_name, precision, rates in rows:
        line = (
            f"{device_name:<7}{precision:<12}{max(rates['raw']):>13.0f}{max(rates['treadle']):>9.0f}"
            f"{best_ratio(rates, 'treadle'):>8}{paired_ratio(rates, 'treadle'):>25}"
        )
        if "lightning" in rates:
            line += (
                f"{max(rates['lightning']):>11.0f}{best_ratio(rates, 'lightning'):>8}"
                f"{paired_ratio(rates, 'lightning'):>25}"
            )
        print(line)
    print(
        "steps/s and best: the fastest chunk of each loop (interference only slows a chunk down); paired: median "
        "over rounds of steps/s against the raw chunk of the same round"
    )


if __name__ == "__main__":
    main()
