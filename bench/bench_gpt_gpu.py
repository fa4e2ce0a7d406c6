"""A GPT-2-small-sized model trained by treadle and by the hand-written PyTorch loop, side by side.

Parts (one per process, so that each has its own time limit in bench/gpu.sh):
  eager    12 layers, width 768, batch 16 x 1024 tokens, bf16-mixed, AdamW (fused where torch offers it):
           raw loop; treadle; treadle with IterationTimer + LearningRateMonitor + ThroughputMonitor +
           ProgressBar; Lightning Fabric when importable. Tokens/s and MFU. Targets 0.99x / 0.98x.
  launch   the same model at batch 1 x 256 tokens, where the host's per-step work decides the speed
           (target 0.98x).
  compile  the eager part with torch.compile: the raw loop on torch.compile(model); treadle given
           torch.compile(model) through fabric.setup (target 0.99x); treadle's set-up model compiled
           (torch.compile(fabric.setup(model))); Lightning. Counts dynamo's graphs, graph breaks and frame
           compilations per loop during its warm-up and during the timed rounds (where any is a recompile).

Every loop lives in one process and runs in rounds that alternate the loops (bench/sidebyside.py). Each
row names the card. Peak memory = what the loop holds between steps + the most its steps allocate.

    python bench/bench_gpt_gpu.py --part eager --rows rows.jsonl          # on the GPU machine
    python bench/bench_gpt_gpu.py --part compile --device cpu --tiny      # CPU dry run of the code paths
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from gpt import GPT  # bench/gpt.py: this script's folder is on sys.path
from sidebyside import Loop, Rows, build, card, time_rounds
from torch import nn
from torch.nn import functional as F

import treadle
from treadle.callbacks.throughput import peak_flops_for

PARTS = ("eager", "launch", "compile")


def sizes(part: str, tiny: bool) -> dict[str, int]:
    if tiny:
        return {"vocab": 128, "length": 32, "width": 32, "layers": 2, "heads": 2, "batch": 2}
    if part == "launch":
        return {"vocab": 50257, "length": 256, "width": 768, "layers": 12, "heads": 12, "batch": 1}
    return {"vocab": 50257, "length": 1024, "width": 768, "layers": 12, "heads": 12, "batch": 16}


def flops_per_token(model: nn.Module, size: dict[str, int]) -> float:
    """nanoGPT's (PaLM's) estimate: 6 FLOPs per weight used in a matrix product, plus attention's."""
    matmul_weights = sum(p.numel() for p in model.parameters()) - model.positions.weight.numel()
    attention = 12 * size["layers"] * size["width"] * size["length"]
    return float(6 * matmul_weights + attention)


def make_model(size: dict[str, int], device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    with device:
        return GPT(size["vocab"], size["length"], size["width"], size["layers"], size["heads"])


def make_optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # Fused AdamW is one kernel launch for all parameters; torch offers it on CUDA.
    return torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")


def make_batch(size: dict[str, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    data = torch.randint(0, size["vocab"], (size["batch"], size["length"] + 1), generator=generator)
    data = data.to(device)
    return data[:, :-1], data[:, 1:]


def compiler(device: torch.device) -> Callable[[nn.Module], nn.Module]:
    """torch.compile with inductor on CUDA; on CPU (dry run) a backend of its own per model that runs the
    captured graph as it is, so dynamo's tracing, guards and counters are exercised without a C++ build."""
    if device.type == "cuda":
        return lambda module: torch.compile(module)  # type: ignore[return-value]

    def compile_eagerly(module: nn.Module) -> nn.Module:
        def backend(graph: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
            return graph.forward

        return torch.compile(module, backend=backend)  # type: ignore[return-value]

    return compile_eagerly


def raw_loop(
    size: dict[str, int], device: torch.device, compile_model: Callable[[nn.Module], nn.Module] | None
) -> Callable[[], Callable[[int], None]]:
    def make() -> Callable[[int], None]:
        model = make_model(size, device)
        optimizer = make_optimizer(model, device)
        run_model = compile_model(model) if compile_model else model
        inputs, targets = make_batch(size, device)

        def run(steps: int) -> None:
            for _ in range(steps):
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    logits = run_model(inputs)
                    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        return run

    return make


def callbacks_on(size: dict[str, int], flops: float, device: torch.device) -> list[Any]:
    from treadle.callbacks.lr_monitor import LearningRateMonitor
    from treadle.callbacks.progress import ProgressBar
    from treadle.callbacks.throughput import ThroughputMonitor
    from treadle.callbacks.timer import IterationTimer

    tokens = size["batch"] * size["length"]
    return [
        IterationTimer(every_n_steps=50, file=sys.stdout),
        LearningRateMonitor(),
        ThroughputMonitor(
            every_n_steps=20, length_fn=lambda batch: tokens, flops_per_batch=flops * tokens, verbose=False
        ),
        ProgressBar(file=sys.stderr),
    ]


def fabric_loop(
    fabric_cls: Any,
    size: dict[str, int],
    device: torch.device,
    compile_model: Callable[[nn.Module], nn.Module] | None = None,
    compile_after_setup: bool = False,
    callbacks: Callable[[], list[Any]] | None = None,
) -> Callable[[], Callable[[int], None]]:
    def make() -> Callable[[int], None]:
        fabric = fabric_cls(
            accelerator=device.type,
            devices=1,
            precision="bf16-mixed",
            callbacks=callbacks() if callbacks else None,
        )
        model = make_model(size, device)
        optimizer = make_optimizer(model, device)
        if compile_model and not compile_after_setup:
            model = compile_model(model)
        model, optimizer = fabric.setup(model, optimizer)
        if compile_model and compile_after_setup:
            model = compile_model(model)
        inputs, targets = make_batch(size, device)
        batch = (inputs, targets)
        hooks = callbacks is not None
        if hooks:
            fabric.call("on_train_start")
            fabric.call("on_train_epoch_start", epoch=0)
        index = 0

        def run(steps: int) -> None:
            nonlocal index
            for _ in range(steps):
                if hooks:
                    fabric.call("on_train_batch_start", batch=batch, batch_idx=index)
                logits = model(inputs)
                loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
                fabric.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                fabric.call("on_train_batch_end", loss=loss, batch=batch, batch_idx=index)
                index += 1

        return run

    return make


def dynamo_counts() -> Counter[str]:
    from torch._dynamo.utils import counters

    return Counter(
        graphs=counters["stats"]["unique_graphs"],
        breaks=counters["graph_break"].total(),
        frames=counters["frames"]["total"],
    )


def counted(run: Callable[[int], None], totals: Counter[str]) -> Callable[[int], None]:
    """`run`, adding the dynamo compilations it causes to `totals` (in timed rounds: recompiles)."""

    def run_counted(steps: int) -> None:
        before = dynamo_counts()
        run(steps)
        totals.update(dynamo_counts() - before)

    return run_counted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part", choices=PARTS, action="append", required=True, help="repeat to run several in this process"
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (for --device cpu dry runs)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=None, help="steps per chunk (default by part)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rows", default=None, help="append the result rows (JSON lines) to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpt_gpu.py: no CUDA device; pass --device cpu --tiny for a dry run.")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    for part in args.part:
        run_part(part, args, device)
    return 0


def run_part(part_name: str, args: argparse.Namespace, device: torch.device) -> None:
    size = sizes(part_name, args.tiny)
    steps = args.steps or {"eager": 8, "launch": 40, "compile": 8}[part_name]
    try:
        from lightning.fabric import Fabric as LightningFabric
    except ImportError:
        LightningFabric = None
    name = card(device)
    flops = flops_per_token(make_model(size, torch.device("meta")), size)
    tokens = size["batch"] * size["length"]
    print(
        f"{part_name}: {name}, torch {torch.__version__}; {size['layers']} layers, width {size['width']}, "
        f"batch {size['batch']} x {size['length']} tokens; {args.rounds} rounds x {steps} steps per loop; "
        f"{flops * tokens / 1e12:.2f} TFLOP per step",
        flush=True,
    )
    compile_model = compiler(device) if part_name == "compile" else None
    makers: dict[str, Callable[[], Callable[[int], None]]] = {"raw": raw_loop(size, device, compile_model)}
    if part_name == "compile":
        makers["treadle setup(compile(m))"] = fabric_loop(treadle.Fabric, size, device, compile_model)
        makers["treadle compile(setup(m))"] = fabric_loop(
            treadle.Fabric, size, device, compile_model, compile_after_setup=True
        )
    else:
        makers["treadle"] = fabric_loop(treadle.Fabric, size, device)
        makers["treadle + 4 callbacks"] = fabric_loop(
            treadle.Fabric, size, device, callbacks=lambda: callbacks_on(size, flops, device)
        )
    if LightningFabric is not None:
        makers["lightning"] = fabric_loop(LightningFabric, size, device, compile_model)

    if compile_model is not None:
        # Recompiles and graph breaks also go to the log, with their reasons.
        torch._logging.set_logs(recompiles=True, graph_breaks=True)
    loops: list[Loop] = []
    warmup_counts: dict[str, Counter[str]] = {}
    timed_counts: dict[str, Counter[str]] = {}
    failures: dict[str, str] = {}
    for loop_name, make in makers.items():
        before = dynamo_counts()
        try:
            loop = build(loop_name, device, make, args.warmup)
        except Exception as error:  # one loop failing (e.g. a graph break dynamo cannot take) is a finding
            if loop_name == "raw":
                raise
            failures[loop_name] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            print(f"--- {loop_name} failed: {failures[loop_name]}", flush=True)
            continue
        warmup_counts[loop_name] = dynamo_counts() - before
        timed_counts[loop_name] = Counter()
        if compile_model is not None:
            loop.run = counted(loop.run, timed_counts[loop_name])
        loops.append(loop)
        print(f"built {loop_name}: resident {loop.resident_bytes / 2**20:.0f} MiB", flush=True)
    time_rounds(loops, device, args.rounds, steps)

    rows = Rows(args.rows)
    raw = loops[0]
    peak = peak_flops_for(name, "bf16") if device.type == "cuda" else None
    part = {
        "eager": f"GPT-2 small B{size['batch']} T{size['length']} bf16-mixed",
        "launch": f"GPT-2 small B{size['batch']} T{size['length']} (launch-bound)",
        "compile": f"GPT-2 small B{size['batch']} T{size['length']} torch.compile",
    }[part_name]
    if args.tiny:
        part = f"tiny GPT ({part_name})"
    for loop in loops[1:]:
        target = 0.98 if ("callbacks" in loop.name or part_name == "launch") else 0.99
        if loop.name == "lightning" or "compile(setup" in loop.name:
            target = None
        extra: dict[str, Any] = {}
        if peak:
            extra["mfu_raw"] = raw.best * tokens * flops / peak
            extra["mfu"] = loop.best * tokens * flops / peak
        note = ""
        if compile_model is not None:
            w, r, t = warmup_counts[loop.name], warmup_counts["raw"], timed_counts[loop.name]
            note = (
                f"warm-up graphs/breaks/frames {w['graphs']}/{w['breaks']}/{w['frames']} "
                f"(raw {r['graphs']}/{r['breaks']}/{r['frames']}); timed-round compiles {t['frames']} "
                f"(raw {timed_counts['raw']['frames']})"
            )
            extra.update(
                breaks=w["breaks"],
                breaks_raw=r["breaks"],
                graphs=w["graphs"],
                graphs_raw=r["graphs"],
                recompiles=t["frames"],
                recompiles_raw=timed_counts["raw"]["frames"],
            )
        rows.compare(part, loop, raw, device, target, unit="tokens/s", per_step=tokens, note=note, **extra)
    for loop_name, failure in failures.items():
        rows.add(part=part, loop=loop_name, card=name, error=failure)


if __name__ == "__main__":
    sys.exit(main())
