"""EarlyStopping, LossGuard and ModelCheckpoint across two real DDP processes (gloo, CPU)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.distributed.runner import run

pytestmark = pytest.mark.distributed

JOB = Path(__file__).parent / "ddp_job.py"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("callbacks_ddp")
    run([sys.executable, str(JOB), str(out)], timeout=90).check()
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def test_early_stopping_stops_every_rank_at_the_same_check(ranks: list[dict[str, Any]]) -> None:
    assert [seen["checks"] for seen in ranks] == [2, 2]
    assert ranks[0]["stopping_reason"] == "another rank's EarlyStopping asked to stop"
    assert ranks[1]["stopping_reason"].startswith("val_loss did not improve")


def test_loss_guard_skips_the_same_step_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert [seen["skipped_steps"] for seen in ranks] == [1, 1]
    assert all(seen["weights_finite"] and seen["weights_identical"] for seen in ranks)


def test_model_checkpoint_ranks_agree_and_rank_zero_writes(ranks: list[dict[str, Any]]) -> None:
    # Rank 1 saw other values (0.5 vs 1.1 at the second check): both keep rank 0's ranking.
    assert ranks[0]["kept"] == ranks[1]["kept"]
    assert list(ranks[0]["kept"].values()) == [0.5]
    assert ranks[0]["files"] == ranks[1]["files"] == ["epoch=1-step=2.ckpt", "last.ckpt"]
