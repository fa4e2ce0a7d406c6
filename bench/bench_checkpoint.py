"""What checkpoint safety costs: ``fabric.save``/``fabric.load`` of a 100 MB state vs bare torch.save/load.

fabric.save adds the atomic write (temporary file, fsync, rename) and the check that every value loads
back with weights_only=True; fabric.load adds the CRC-32 check of every record (both sides then copy the weights into the model). Both sides write to the
same folder, alternating, and the best of ``--repeat`` runs is compared (the page cache is warm for both).

    python bench/bench_checkpoint.py [--megabytes 100] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from treadle import Fabric
from treadle.integrity import verify_archive


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    width = 1024
    layers = max(1, args.megabytes * 1_000_000 // (4 * width * width))  # float32 1024x1024 blocks
    model = nn.Sequential(*(nn.Linear(width, width, bias=False) for _ in range(layers)))
    fabric = Fabric(accelerator="cpu")
    model = fabric.setup(model)
    state = {"model": model, "step": 3, "config": {"lr": 3e-4, "name": "bench"}}
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as folder:
        raw_path, ours_path = os.path.join(folder, "raw.pt"), os.path.join(folder, "ours.pt")
        raw_state = {"model": model.state_dict(), "step": 3, "config": state["config"]}

        def torch_save_fsync() -> None:
            with open(raw_path, "wb") as file:
                torch.save(raw_state, file)
                file.flush()
                os.fsync(file.fileno())

        save_raw = best(lambda: torch.save(raw_state, raw_path), args.repeat)
        save_durable = best(torch_save_fsync, args.repeat)
        save_ours = best(lambda: fabric.save(ours_path, state), args.repeat)

        def torch_load() -> None:
            model.load_state_dict(torch.load(raw_path, map_location="cpu", weights_only=True)["model"])

        load_raw = best(torch_load, args.repeat)
        load_ours = best(lambda: fabric.load(ours_path, {"model": model}), args.repeat)
        verify = best(lambda: verify_archive(ours_path), args.repeat)
    print(f"state: {size:.0f} MB in {layers} tensors, best of {args.repeat}")
    print(f"{'':<28}{'torch':>10}{'treadle':>10}{'ratio':>8}")
    rows = [
        ("save", save_raw, save_ours),
        ("save vs torch + fsync", save_durable, save_ours),
        ("load into the model", load_raw, load_ours),
    ]
    for name, theirs, ours in rows:
        print(f"{name:<28}{theirs * 1e3:>8.0f}ms{ours * 1e3:>8.0f}ms{ours / theirs:>7.2f}x")
    print(f"CRC-32 check alone: {verify * 1e3:.0f} ms ({size / verify / 1e3:.1f} GB/s)")


if __name__ == "__main__":
    main()
