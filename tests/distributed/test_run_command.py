"""`treadle run` and `python -m treadle run` start a script on N processes through torch.distributed.run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.runner import JOBS, run

pytestmark = pytest.mark.distributed

SCRIPT = str(JOBS / "job_run.py")


def treadle_command() -> list[str]:
    # The console script when installed next to this python, else the module form (same code path).
    script = Path(sys.executable).with_name("treadle")
    return [str(script)] if script.exists() else [sys.executable, "-m", "treadle"]


def test_treadle_run_passes_its_settings_to_fabric(tmp_path: Path) -> None:
    command = [
        *treadle_command(),
        "run",
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "--precision",
        "bf16-mixed",
    ]
    run([*command, SCRIPT, str(tmp_path), "--lr", "0.1"]).check()
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    for rank, seen in enumerate(ranks):
        assert seen["rank"] == rank
        assert seen["world_size"] == 2
        assert seen["strategy"] == "ddp"
        assert seen["precision"] == "bf16-mixed"
        assert seen["accelerator"] == "cpu"
        assert seen["argv"] == ["--lr", "0.1"]
        assert seen["total"] == 2.0
        assert seen["code_wins"] == "64-true"
        # "32-true" is Fabric's default, so it gives way to the command line.
        assert seen["default_gives_way"] == "bf16-mixed"
    (warning,) = ranks[0]["warnings"]
    assert "Fabric(precision='64-true')" in warning and "--precision bf16-mixed" in warning
    assert ranks[1]["warnings"] == [], "the conflict is reported once, by rank 0"


def test_python_m_treadle_run(tmp_path: Path) -> None:
    run(
        [sys.executable, "-m", "treadle", "run", "--devices", "2", "--strategy", "ddp", SCRIPT, str(tmp_path)]
    ).check()
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert [(seen["strategy"], seen["precision"], seen["total"]) for seen in ranks] == [
        ("ddp", "32-true", 2.0)
    ] * 2


def test_treadle_run_ends_every_rank_when_one_fails(tmp_path: Path) -> None:
    finished = run([sys.executable, "-m", "treadle", "run", "--devices", "2", SCRIPT, str(tmp_path), "fail"])
    assert finished.returncode != 0
    assert "rank 1 failed on purpose" in finished.stderr
    assert finished.seconds < 25, finished.stderr
