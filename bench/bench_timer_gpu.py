"""What timing each iteration costs: a GPT-2-small-sized bf16 training loop, three ways, side by side.

Variants, run in interleaved segments of the same loop (same Fabric, model and optimizer):
  none     no timer (the loop still fires on_train_batch_end, to no callback)
  ours     treadle's IterationTimer printing every 50 steps (CUDA events, read without blocking)
  naive    the obvious timer: loss.item() and time.perf_counter() at every batch end
Each segment is timed with the device synchronised at its two ends only. The result per variant is the
median over rounds of its steps/s divided by the no-timer steps/s of the same round. Target: ours >= 0.99x.
It also checks that the timer's figures match the synchronised measurement.

    python bench/bench_timer_gpu.py             # on the GPU machine (about a minute on an H200)
    python bench/bench_timer_gpu.py --smoke     # a tiny model on whatever device there is, to test the script
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Any

import torch
from gpt import GPT  # bench/gpt.py: this script's folder is on sys.path
from torch.nn import functional as F

from treadle import Fabric
from treadle.callbacks.timer import IterationTimer

PRINT_EVERY = 50


class NaiveTimer:
    """What people write first: a host clock read after forcing the loss to the host."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.durations: list[float] = []

    def on_train_batch_end(self, loss: torch.Tensor) -> None:
        loss.item()
        now = time.perf_counter()
        if self.last is not None:
            self.durations.append(now - self.last)
        self.last = now


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model, few steps: checks the script runs")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds for the measured segments")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if args.smoke:
        vocab, length, width, layers, heads, batch = 256, 64, 64, 2, 4, 4
    else:
        if not cuda:
            raise SystemExit(
                "bench_timer_gpu.py needs a CUDA device (use --smoke to test the script elsewhere)."
            )
        vocab, length, width, layers, heads, batch = 50257, 1024, 768, 12, 12, 8
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cuda" if cuda else "cpu", precision="bf16-mixed")
    with fabric.init_module():
        model = GPT(vocab, length, width, layers, heads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=cuda)
    model, optimizer = fabric.setup(model, optimizer)
    data = torch.randint(0, vocab, (batch, length + 1), device=fabric.device)
    inputs, targets = data[:, :-1], data[:, 1:]

    def run(steps: int) -> float:
        """Train `steps` steps; seconds taken, with the device synchronised at both ends only."""
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            logits = model(inputs)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            fabric.call("on_train_batch_end", loss=loss.detach())
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(3 if args.smoke else 15)  # warm-up: kernels chosen, allocator filled
    probe = 2 if args.smoke else 10
    step_seconds = run(probe) / probe
    steps = int(args.budget / (args.rounds * 3 * step_seconds)) // PRINT_EVERY * PRINT_EVERY
    steps = max(PRINT_EVERY, min(steps, 400)) if not args.smoke else PRINT_EVERY
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    print(
        f"GPT-2-small-sized bf16 loop on {device_name}, torch {torch.__version__}: {layers} layers, width "
        f"{width}, {heads} heads, batch {batch} x {length} tokens; {step_seconds * 1000:.1f} ms/step; "
        f"{args.rounds} rounds x 3 variants x {steps} steps"
    )

    rates: dict[str, list[float]] = {"none": [], "ours": [], "naive": []}
    ratios: dict[str, list[float]] = {"ours": [], "naive": []}
    agreement: list[tuple[float, float]] = []  # (timer's mean, synchronised mean) per ours-segment
    order = ["none", "ours", "naive"]
    for round_index in range(args.rounds):
        seconds: dict[str, float] = {}
        for variant in order[round_index % 3 :] + order[: round_index % 3]:  # rotate who goes first
            callback: Any = None
            lines = io.StringIO()
            if variant == "ours":
                callback = IterationTimer(every_n_steps=PRINT_EVERY, file=lines)
            elif variant == "naive":
                callback = NaiveTimer()
            if callback is not None:
                fabric.add_callback(callback)
            seconds[variant] = run(steps)
            if callback is not None:
                fabric.remove_callback(callback)
            if variant == "ours":
                summary = callback.summary()  # reads the remaining events (after the measurement)
                printed = lines.getvalue().splitlines()
                assert len(printed) == steps // PRINT_EVERY, printed
                # The timer times iterations 2..steps (the first has no start without on_train_batch_start).
                agreement.append((summary.mean, seconds[variant] / steps))
            rates[variant].append(steps / seconds[variant])
        for variant in ratios:
            ratios[variant].append(seconds["none"] / seconds[variant])

    print()
    print(f"{'variant':<34}{'steps/s (median)':>18}{'ratio vs none':>16}")
    labels = {
        "none": "no timer",
        "ours": f"IterationTimer(every_n_steps={PRINT_EVERY})",
        "naive": "naive loss.item() + perf_counter",
    }
    for variant, label in labels.items():
        ratio = "1.000" if variant == "none" else f"{statistics.median(ratios[variant]):.3f}"
        print(f"{label:<34}{statistics.median(rates[variant]):>18.2f}{ratio:>16}")
    print(f"per-round ratios, ours: {', '.join(f'{r:.3f}' for r in ratios['ours'])}")
    print(f"per-round ratios, naive: {', '.join(f'{r:.3f}' for r in ratios['naive'])}")
    timer_mean = statistics.median(mean for mean, _ in agreement)
    wall_mean = statistics.median(wall for _, wall in agreement)
    print(
        f"timer's mean iteration {timer_mean * 1000:.3f} ms vs synchronised wall clock {wall_mean * 1000:.3f} ms "
        f"per step ({100 * (timer_mean / wall_mean - 1):+.2f}%)"
    )
    ours = statistics.median(ratios["ours"])
    print(f"target ours >= 0.99x: {'met' if ours >= 0.99 else 'NOT met'} ({ours:.3f}x)")


if __name__ == "__main__":
    main()
