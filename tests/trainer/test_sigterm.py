"""SIGTERM during fit: last.ckpt at the next step boundary, a clean return, and an exact continuation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.trainer.sigterm_job import train

JOB = Path(__file__).with_name("sigterm_job.py")


def _run(out_dir: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(JOB), str(out_dir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_sigterm_saves_last_checkpoint_returns_cleanly_and_resume_matches(tmp_path: Path) -> None:
    interrupted = _run(tmp_path, "interrupt")
    assert interrupted.stdout is not None
    try:
        line = interrupted.stdout.readline()
        assert line.strip() == "READY", line + interrupted.communicate(timeout=30)[1]
        interrupted.send_signal(signal.SIGTERM)
        _, stderr = interrupted.communicate(timeout=60)
    finally:
        interrupted.kill()
    assert interrupted.returncode == 0, stderr
    report = json.loads((tmp_path / "report_interrupt.json").read_text())
    assert report["stop_reason"].startswith("preempted (SIGTERM): saved")
    assert 4 <= report["global_step"] < 30
    assert report["statuses"] == ["interrupted"]
    assert report["handler_restored"]
    assert (tmp_path / "last.ckpt").exists()

    resumed = _run(tmp_path, "resume")
    _, stderr = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, stderr
    assert json.loads((tmp_path / "report_resume.json").read_text())["global_step"] == 30

    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    train(reference_dir, "full")
    expected = torch.load(reference_dir / "weights_full.pt", weights_only=True)
    continued = torch.load(tmp_path / "weights_resume.pt", weights_only=True)
    for name, value in expected.items():
        assert torch.equal(value, continued[name]), name
