"""Training stall per checkpoint: ``fabric.save`` vs ``fabric.save(async_save=True)``, ~100 MB state on CPU.

The same training loop (a stack of 1024x1024 linear layers, SGD) runs three ways: without saving, saving
every ``--every`` steps (but not at the last step) synchronously, and saving in the background. The stall per save is the extra time
of the loop over the loop that never saves, divided by the number of saves; the loops that save end with
``wait_for_saves()``, so nothing written in the background is left out. Also shown: how long the call
itself blocks (the copy of the state, for async). Best of ``--repeat`` rounds, loops alternating.

Training runs on ``--threads`` cores (default 1), as a GPU job leaves the CPU mostly idle: the background
write needs a core of its own. With every core busy training, writing costs the same CPU time either way.

    python bench/bench_async_save.py [--megabytes 100] [--steps 40] [--every 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch import nn

from treadle import Fabric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the copy then goes to pinned memory)")
    parser.add_argument(
        "--threads", type=int, default=1, help="training threads (default 1: a core left for the writer)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width = 1024
    layers = max(1, args.megabytes * 1_000_000 // (4 * width * width))
    fabric = Fabric(accelerator=args.device)
    model = nn.Sequential(*(nn.Linear(width, width, bias=False) for _ in range(layers)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    model, optimizer = fabric.setup(model, optimizer)
    batch = torch.randn(16, width, device=fabric.device)
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    saves = args.steps // args.every - 1  # no save in the last stretch: the last write overlaps training too

    def loop(mode: str, path: str, calls: list[float]) -> float:
        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            fabric.backward(model(batch).square().mean())
            optimizer.step()
            optimizer.zero_grad()
            if mode != "none" and step % args.every == 0 and step < args.steps:
                called = time.perf_counter()
                fabric.save(path, {"model": model, "step": step}, async_save=mode == "async")
                calls.append(time.perf_counter() - called)
        fabric.wait_for_saves()
        if fabric.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    totals: dict[str, list[float]] = {"none": [], "sync": [], "async": []}
    calls: dict[str, list[float]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as folder:
        path = os.path.join(folder, "last.pt")
        loop("async", path, [])  # warm-up: allocator, page cache, thread start
        for _ in range(args.repeat):
            for mode in totals:
                totals[mode].append(loop(mode, path, calls.setdefault(mode, [])))
    base = min(totals["none"])
    stall = {mode: (min(totals[mode]) - base) / saves for mode in ("sync", "async")}
    print(
        f"state: {size:.0f} MB in {layers} tensors on {fabric.device.type}"
        + (f" ({torch.cuda.get_device_name()})" if fabric.device.type == "cuda" else "")
        + f"; {args.steps} steps on {args.threads} thread(s), a save "
        f"every {args.every}; best of {args.repeat}"
    )
    print(f"loop without saves: {base * 1e3:.0f} ms ({base / args.steps * 1e3:.1f} ms/step)")
    print(f"{'':<10}{'stall/save':>12}{'call blocks':>13}")
    for mode in ("sync", "async"):
        print(f"{mode:<10}{stall[mode] * 1e3:>10.0f}ms{statistics.median(calls[mode]) * 1e3:>11.0f}ms")
    print(f"async stall is {stall['sync'] / max(stall['async'], 1e-9):.1f}x shorter than sync (target >= 3x)")


if __name__ == "__main__":
    main()
