"""Background saves with two real DDP processes (jobs/job_async_save.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distributed.runner import run_job

pytestmark = pytest.mark.distributed


def test_rank_zero_writes_and_every_rank_learns_of_a_failed_write(tmp_path: Path) -> None:
    run_job("job_async_save", str(tmp_path), timeout=60).check()
    zero, one = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2))
    assert zero["saved_is_the_old_state"] and one["saved_is_the_old_state"]
    assert zero["failure"] == "OSError: [Errno 28] No space left on device"
    assert one["failure"].startswith("RuntimeError: Another rank failed to finish writing the previous")
    assert zero["kept"] == one["kept"] == 1, "the failed write left the previous file"
    for rank in (zero, one):
        assert rank["files"] == ["1.ckpt", "last.ckpt"], "the best file and last.ckpt, the rest deleted"
        assert rank["last_epoch"] == 2, "last.ckpt is the newest state"
