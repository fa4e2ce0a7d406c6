"""A run stopped mid-epoch on 2 ranks and resumed on 3 or on 1 trains every sample of the epoch once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.runner import run

JOB = Path(__file__).with_name("world_resume_job.py")


def ids(folder: Path, mode: str, devices: int) -> tuple[list[int], list[str]]:
    seen, notes = [], []
    for rank in range(devices):
        record = torch.load(folder / f"{mode}-{devices}-rank{rank}.pt", weights_only=True)
        seen += [i for batch in record["seen"] for i in batch]
        notes += record["warnings"]
    return seen, notes


@pytest.mark.distributed
@pytest.mark.parametrize("devices", [3, 1])
def test_resuming_on_another_number_of_processes_continues_the_epoch(tmp_path: Path, devices: int) -> None:
    run([sys.executable, str(JOB), "stop", str(tmp_path), "2"], timeout=90).check()
    run([sys.executable, str(JOB), "resume", str(tmp_path), str(devices)], timeout=90).check()
    before, _ = ids(tmp_path, "stop", 2)
    after, notes = ids(tmp_path, "resume", devices)
    assert len(before) == 5 * 4 * 2, "5 batches of 4 on each of 2 ranks"
    assert not notes
    assert not set(before) & set(after), "no sample of the epoch is trained on twice"
    assert set(before) | set(after) == set(range(60)), "none is skipped"
    # A DistributedSampler pads the rest so that every rank gets as many: 20 samples over 3 ranks is 21.
    assert len(after) == (21 if devices == 3 else 20)


@pytest.mark.distributed
def test_a_one_process_run_resumed_on_two_says_what_it_cannot_guarantee(tmp_path: Path) -> None:
    run([sys.executable, str(JOB), "stop", str(tmp_path), "1"], timeout=90).check()
    run([sys.executable, str(JOB), "resume", str(tmp_path), "2"], timeout=90).check()
    _, notes = ids(tmp_path, "resume", 2)
    assert len(notes) == 2 and "written by 1 process(es) and this run has 2" in notes[0]
    assert "resume from a checkpoint written at the end of an epoch" in notes[0]
