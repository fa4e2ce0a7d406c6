"""bench/gpu.sh --dry-run: the GPU benchmark script runs every part on CPU and prints its one table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Every result row the dry run must print: (part, loop) as the table names them.
EXPECTED_ROWS = [
    ("tiny-model step 32-true", "treadle"),
    ("tiny-model step bf16-mixed", "treadle"),
    ("tiny GPT (eager)", "treadle"),
    ("tiny GPT (eager)", "treadle + 4 callbacks"),
    ("tiny GPT (launch)", "treadle"),
    ("tiny GPT (launch)", "treadle + 4 callbacks"),
    ("tiny GPT (compile)", "treadle setup(compile(m))"),
    ("tiny GPT (compile)", "treadle compile(setup(m))"),
    *(
        ("FSDP2 vs DDP, world size 1", loop)
        for loop in (
            "ddp raw",
            "ddp treadle",
            "fsdp raw",
            "fsdp raw + autocast",
            "fsdp raw, no reshard",
            "fsdp treadle",
            "fsdp treadle, no reshard",
            "fsdp treadle, one group",
        )
    ),
    ("FSDP2/DDP: treadle vs raw", "fsdp treadle"),
    ("FSDP2/DDP: treadle vs raw", "ddp treadle"),
    ("DDP/FSDP2 world size 1, one process each", "ddp"),
    ("DDP/FSDP2 world size 1, one process each", "fsdp-sharded"),
]


@pytest.mark.distributed
def test_dry_run_prints_every_row(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    env.pop("TREADLE_BENCH_DRY_RUN", None)
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout
    table = output[output.index("=== table") :]
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    results = {(row["part"], row["loop"]): row for row in rows if "status" not in row}
    statuses = {row["part"]: row["status"] for row in rows if "status" in row}

    for part in ("step", "gpt", "fsdp-breakdown", "ddp-fsdp"):
        assert statuses[part].startswith("ok"), (part, statuses[part], output[-3000:])
    assert "not run" in statuses["async-save"] and "not run" in statuses["gpu-tests"]
    for part, loop in EXPECTED_ROWS:
        row = results[(part, loop)]
        assert "error" not in row, row
        assert row["card"] == "cpu"
        assert row["raw"] > 0 and row["value"] > 0 and row["ratio"] > 0
        line = next((text for text in table.splitlines() if text.startswith(part) and loop in text), None)
        assert line is not None, f"no table line for {part} / {loop}:\n{table}"
        assert "cpu" in line
    # torch.compile: dynamo's counts reach the table, and nothing compiles again in the timed rounds.
    compiled = results[("tiny GPT (compile)", "treadle setup(compile(m))")]
    assert compiled["graphs"] >= 1 and compiled["recompiles"] == 0 and compiled["recompiles_raw"] == 0
    assert compiled["breaks"] == compiled["breaks_raw"]
    assert "graphs/breaks/frames" in table
    # The FSDP breakdown: phase times of every variant.
    breakdown = results[("FSDP2 vs DDP, world size 1", "fsdp treadle")]
    assert all(breakdown[key] > 0 for key in ("fwd_ms", "bwd_ms", "opt_ms"))
    assert "parts: " in table
