"""Bitwise-exact resume on 2 CPU ranks, and what it needs (deterministic kernels, the same thread count)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.runner import run
from tests.trainer.models import Classifier, loader, trainer
from treadle import seed_everything

JOB = Path(__file__).with_name("ddp_resume_job.py")


@pytest.mark.distributed
def test_a_ddp_run_stopped_mid_epoch_and_resumed_ends_bitwise_equal(tmp_path: Path) -> None:
    for mode in ("whole", "stop", "resume"):
        run([sys.executable, str(JOB), mode, str(tmp_path)], timeout=120).check()
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_deterministic_switch_sets_the_flags() -> None:
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    try:
        assert seed_everything(3, deterministic=True) == 3
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = before[1]
    with pytest.raises(TypeError, match="deterministic='yes'"):
        seed_everything(3, deterministic="yes")  # type: ignore[arg-type]


def test_resume_with_another_cpu_thread_count_warns(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    fitted = trainer(max_epochs=1)
    fitted.fit(Classifier(), loader())
    fitted.save_checkpoint(tmp_path / "a.ckpt")
    torch.set_num_threads(threads + 1)
    try:
        with pytest.warns(UserWarning, match=rf"written with {threads} CPU threads, this run has {threads + 1}"):
            trainer(max_epochs=2).fit(Classifier(), loader(), ckpt_path=tmp_path / "a.ckpt")
    finally:
        torch.set_num_threads(threads)
