"""DDP and FSDP2 on one GPU (world size 1, nccl), bf16-mixed: train a small transformer, round-trip checkpoints.

Each configuration runs in a process of its own (a failure in one cannot take the others down, and each
starts with a fresh CUDA context); the table comes last:

  ddp            Fabric(strategy=DDPStrategy()), fabric.launch() joins a one-process group in-process
  ddp-run        the same script started by `treadle run --devices 1 --strategy ddp` (torchrun underneath)
  fsdp-sharded   FSDPStrategy(shard_modules={Block}), checkpoint as a sharded folder
  fsdp-full      FSDPStrategy(shard_modules={Block}, state_dict_type="full"), checkpoint as one file

Per configuration: steps/s and tokens/s over the timed steps, first and last loss, peak memory, save and
load seconds, and whether the restored model has the same weights and gives the same next loss.

    python bench/gpu_distributed.py                 # on the GPU machine, about a minute on an H200
    python bench/gpu_distributed.py --smoke         # tiny, on CPU with gloo: checks the script itself
    python bench/gpu_distributed.py --rows rows.jsonl   # also append rows for bench/gpu_table.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any

import torch

# bench/gpt.py: this script's folder is on sys.path, also in the ranks it starts
from gpt import Block, TinyGPT
from torch.nn import functional as F

CONFIGS = ("ddp", "ddp-run", "fsdp-sharded", "fsdp-full")


def sizes(smoke: bool) -> dict[str, int]:
    if smoke:
        return {
            "vocab": 64,
            "width": 32,
            "depth": 2,
            "heads": 2,
            "length": 16,
            "batch": 4,
            "steps": 12,
            "warmup": 2,
        }
    return {
        "vocab": 8192,
        "width": 512,
        "depth": 6,
        "heads": 8,
        "length": 256,
        "batch": 16,
        "steps": 300,
        "warmup": 20,
    }


def make_batch(size: dict[str, int], step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Learnable on purpose: each sequence counts up from a random start, so the loss must fall.
    generator = torch.Generator().manual_seed(step)
    start = torch.randint(0, size["vocab"], (size["batch"], 1), generator=generator)
    tokens = (start + torch.arange(size["length"] + 1)) % size["vocab"]
    tokens = tokens.to(device)
    return tokens[:, :-1], tokens[:, 1:]


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def run_config(config: str, smoke: bool) -> dict[str, Any]:
    from treadle import Fabric
    from treadle.strategies.ddp import DDPStrategy
    from treadle.strategies.fsdp import FSDPStrategy

    size = sizes(smoke)
    accelerator = "cpu" if smoke else "cuda"
    timeout = timedelta(minutes=2)
    strategy: Any
    if config in ("ddp", "ddp-run"):
        strategy = DDPStrategy(timeout=timeout)
    else:
        kind = "sharded" if config == "fsdp-sharded" else "full"
        strategy = FSDPStrategy(shard_modules={Block}, state_dict_type=kind, timeout=timeout)  # type: ignore[arg-type]
    if config == "ddp-run":
        fabric = Fabric(strategy=strategy)  # accelerator, devices and precision come from `treadle run`
    else:
        fabric = Fabric(accelerator=accelerator, devices=1, strategy=strategy, precision="bf16-mixed")
    fabric.launch()
    device = fabric.device
    torch.manual_seed(0)
    model = TinyGPT(size["vocab"], size["width"], size["depth"], size["heads"], size["length"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = fabric.setup(model, optimizer)

    def train_step(step: int) -> torch.Tensor:
        inputs, targets = make_batch(size, step, device)
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    first = train_step(0).item()
    for step in range(1, size["warmup"]):
        train_step(step)
    synchronize(device)
    start = time.perf_counter()
    for step in range(size["warmup"], size["steps"]):
        loss = train_step(step)
    synchronize(device)
    seconds = time.perf_counter() - start
    timed_steps = size["steps"] - size["warmup"]
    last = loss.item()

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "checkpoint" if config == "fsdp-sharded" else "checkpoint.pt")
        synchronize(device)
        start = time.perf_counter()
        fabric.save(path, {"model": model, "optimizer": optimizer, "step": size["steps"]})
        save_seconds = time.perf_counter() - start
        weights = {
            name: full(value).detach().float().cpu().clone() for name, value in model.state_dict().items()
        }
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(0.0)
        state: dict[str, Any] = {"model": model, "optimizer": optimizer, "step": 0}
        start = time.perf_counter()
        fabric.load(path, state)
        synchronize(device)
        load_seconds = time.perf_counter() - start
    same_weights = all(
        torch.equal(weights[name], full(value).detach().float().cpu())
        for name, value in model.state_dict().items()
    )
    inputs, targets = make_batch(size, 10_000, device)
    with torch.no_grad():
        logits = model(inputs)
        next_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "config": config,
        "strategy": repr(fabric.strategy),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else "none",
        "precision": fabric.precision.name,
        "steps_per_s": timed_steps / seconds,
        "tokens_per_s": timed_steps * size["batch"] * size["length"] / seconds,
        "first_loss": first,
        "last_loss": last,
        "peak_gib": peak,
        "save_s": save_seconds,
        "load_s": load_seconds,
        "restored": same_weights and state["step"] == size["steps"] and math.isfinite(next_loss),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_child(config: str, smoke: bool, timeout: float) -> dict[str, Any]:
    script = os.path.abspath(__file__)
    arguments = ["--child", config] + (["--smoke"] if smoke else [])
    if config == "ddp-run":
        accelerator = "cpu" if smoke else "cuda"
        command = [sys.executable, "-m", "treadle", "run", "--devices", "1", "--strategy", "ddp"]
        command += ["--accelerator", accelerator, "--precision", "bf16-mixed", script, *arguments]
    else:
        command = [sys.executable, script, *arguments]
    started = time.perf_counter()
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        return {
            "config": config,
            "error": f"timed out after {timeout:.0f} s",
            "output": str(error.stdout)[-2000:],
        }
    for line in finished.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            result["wall_s"] = time.perf_counter() - started
            return result
    return {"config": config, "error": f"exit code {finished.returncode}", "output": finished.stderr[-3000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model on CPU with gloo, to test the script"
    )
    parser.add_argument("--only", choices=CONFIGS, action="append", help="run only this configuration")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--rows", default=None, help="append the result rows (JSON lines) to this file")
    args = parser.parse_args()
    if args.child:
        result = run_config(args.child, args.smoke)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print("No CUDA device: run this on the GPU machine, or pass --smoke to test the script on CPU.")
        return 2
    if not args.smoke:
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
    results = []
    for config in args.only or CONFIGS:
        result = run_child(config, args.smoke, timeout=60 if args.smoke else 110)
        results.append(result)
        if "error" in result:
            print(f"--- {config} failed: {result['error']}\n{result.get('output', '')}", flush=True)
    print()
    header = f"{'config':<14}{'steps/s':>9}{'tokens/s':>11}{'loss first->last':>19}{'peak GiB':>10}"
    header += f"{'save s':>8}{'load s':>8}{'restored':>10}{'wall s':>8}"
    print(header)
    failed = False
    for result in results:
        if "error" in result:
            failed = True
            print(f"{result['config']:<14}FAILED: {result['error']}")
            continue
        failed = failed or not result["restored"]
        losses = f"{result['first_loss']:.2f}->{result['last_loss']:.2f}"
        print(
            f"{result['config']:<14}{result['steps_per_s']:>9.1f}{result['tokens_per_s']:>11.0f}{losses:>19}"
            f"{result['peak_gib']:>10.2f}{result['save_s']:>8.2f}{result['load_s']:>8.2f}"
            f"{'yes' if result['restored'] else 'NO':>10}{result['wall_s']:>8.1f}"
        )
    if args.rows:
        write_rows(args.rows, results, "cpu" if args.smoke else torch.cuda.get_device_name(0))
    return 1 if failed else 0


def write_rows(path: str, results: list[dict[str, Any]], card: str) -> None:
    """One row per configuration for bench/gpu_table.py, its steps/s against the ddp configuration's."""
    baseline = next((r for r in results if r["config"] == "ddp" and "error" not in r), None)
    with open(path, "a", encoding="utf-8") as file:
        for result in results:
            part = "DDP/FSDP2 world size 1, one process each"
            if "error" in result:
                row: dict[str, Any] = {
                    "part": part,
                    "loop": result["config"],
                    "card": card,
                    "error": result["error"],
                }
            elif baseline is None:
                continue
            else:
                ratio = result["steps_per_s"] / baseline["steps_per_s"]
                peak = None if math.isnan(result["peak_gib"]) else result["peak_gib"] * 1024
                base_peak = None if math.isnan(baseline["peak_gib"]) else baseline["peak_gib"] * 1024
                row = {
                    "part": part,
                    "loop": result["config"],
                    "baseline": "ddp",
                    "card": card,
                    "unit": "steps/s",
                    "raw": baseline["steps_per_s"],
                    "value": result["steps_per_s"],
                    "ratio": ratio,
                    "ratio_low": ratio,
                    "ratio_high": ratio,
                    "best_ratio": ratio,
                    "target": None,
                    "peak_raw_mib": base_peak,
                    "peak_mib": peak,
                    "note": f"save {result['save_s']:.2f} s, load {result['load_s']:.2f} s, restored "
                    + ("yes" if result["restored"] else "NO"),
                }
            file.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
