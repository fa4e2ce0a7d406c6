"""Strategy's rank-zero work: one process just runs it; save_checkpoint goes through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from treadle import Fabric
from treadle.checkpoint import load_checkpoint
from treadle.strategies.base import Strategy


def test_one_process_runs_rank_zero_work_once_and_raises_its_error() -> None:
    calls: list[int] = []
    Strategy().run_on_rank_zero(lambda: calls.append(1), "count")
    assert calls == [1]

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        Strategy().run_on_rank_zero(fail, "write")


def test_save_checkpoint_writes_through_run_on_rank_zero(tmp_path: Path) -> None:
    class Recording(Strategy):
        what: list[str] = []

        def run_on_rank_zero(self, action: object, what: str) -> None:
            self.what.append(what)
            super().run_on_rank_zero(action, what)  # type: ignore[arg-type]

    fabric = Fabric(accelerator="cpu", strategy=Recording())
    fabric.save(tmp_path / "last.pt", {"step": 3, "w": torch.ones(1)})
    assert Recording.what == [f"write the checkpoint {str(tmp_path / 'last.pt')!r}"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3


def test_parallel_rank_zero_work_needs_the_processes_before_it_starts(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    with pytest.raises(
        RuntimeError, match=r"To write the checkpoint .* needs the processes .* fabric.launch\(\)"
    ):
        fabric.save(tmp_path / "last.pt", {"step": 1})
    assert not list(tmp_path.iterdir()), "rank 0 must not write before the other ranks can hear about it"
