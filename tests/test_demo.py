"""`treadle demo`: reaches its target accuracy, writes logs and a checkpoint, and resumes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from treadle.cli import main
from treadle.demo import TARGET_ACCURACY, glyphs, make_digits, run_demo


def test_data_is_ten_distinct_glyphs_made_noisy_reproducibly() -> None:
    clean = glyphs()
    assert clean.shape == (10, 8, 8)
    assert len({tuple(g.flatten().tolist()) for g in clean}) == 10
    first, again = make_digits(50, seed=3), make_digits(50, seed=3)
    assert torch.equal(first.tensors[0], again.tensors[0])
    assert first.tensors[0].shape == (50, 64)
    assert set(first.tensors[1].tolist()) <= set(range(10))


def test_demo_reaches_the_target_then_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # As in CI, nohup or SLURM: stderr is a file, so the progress bar prints plain lines, not redraws.
    with open(tmp_path / "stderr.log", "w") as err:
        done = subprocess.run(
            [sys.executable, "-m", "treadle", "demo", "--root", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=300,
        )
    log = (tmp_path / "stderr.log").read_bytes()
    assert done.returncode == 0, log.decode()[-2000:]
    # Regression: 493 KB with 3,912 carriage-return redraws. Now one line per epoch.
    assert len(log) < 20_000 and b"\r" not in log
    assert log.count(b" done: 313 batches") == 12
    out = done.stdout
    assert f">= target {TARGET_ACCURACY}" in out
    metrics = tmp_path / "logs" / "version_0" / "metrics.csv"
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert f"logs:       {metrics}" in out and f"checkpoint: {checkpoint}" in out
    assert checkpoint.exists() and (tmp_path / "logs" / "version_0" / "hparams.json").exists()
    with open(metrics) as file:
        rows = list(csv.DictReader(file))
    assert {"train_loss", "val_loss", "val_acc", "epoch", "lr-AdamW"} <= set(rows[0])
    curves = tmp_path / "logs" / "version_0" / "curves.png"
    assert f"curves:     {curves}" in out and curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "IterationTimer: 3756 iterations" in out  # the timer's summary at the end of training
    assert any(
        path.name.startswith("epoch=") for path in (tmp_path / "checkpoints").iterdir()
    )  # best by val_acc
    last_step = int(rows[-1]["step"])

    # One more epoch on top: continues from the checkpoint, in the same log folder.
    assert run_demo(tmp_path, resume=True, max_epochs=13, progress_bar=False) == 0
    out = capsys.readouterr().out
    assert "(resumed)" in out
    with open(metrics) as file:
        steps = [int(row["step"]) for row in csv.DictReader(file)]
    assert max(steps) > last_step and max(steps) - last_step <= 313
    assert not (tmp_path / "logs" / "version_1").exists()

    # Resuming a finished run: says so and how to extend it, instead of "IterationTimer: no iterations".
    assert main(["demo", "--root", str(tmp_path), "--resume", "--max-epochs", "13"]) == 0
    out = capsys.readouterr().out
    assert f"The run in {tmp_path} is complete" in out and "13 trained epochs" in out
    assert f"treadle demo --root {tmp_path} --resume --max-epochs 17" in out
    assert "IterationTimer" not in out


def test_cli_resume_without_checkpoint_starts_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--root", str(tmp_path), "--resume", "--max-epochs", "1", "--no-progress-bar"])
    out = capsys.readouterr().out
    assert "No checkpoint" in out and "starting a new run" in out
    assert code == 1 and "missed" in out  # one epoch is not enough to reach the target
    with pytest.raises(ValueError, match="--max-epochs 0"):
        run_demo(tmp_path, resume=False, max_epochs=0, progress_bar=False)


def test_sigterm_in_the_first_epoch_prints_the_resume_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: ModelCheckpoint ranked the unfinished epoch 0 by a val_acc never logged and the demo died;
    # afterwards the demo overwrote the logger's "interrupted" status with "success".
    import os
    import signal

    import treadle.demo as demo
    from treadle.loggers import CSVLogger

    build = demo.build_callbacks

    class Terminate:
        def on_train_batch_end(self, batch_idx: int) -> None:
            if batch_idx == 5:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(demo, "build_callbacks", lambda *a, **k: [*build(*a, **k), Terminate()])
    statuses: list[str] = []
    finalize = CSVLogger.finalize
    monkeypatch.setattr(
        CSVLogger, "finalize", lambda self, status: (statuses.append(status), finalize(self, status))[1]
    )
    run_demo(tmp_path, resume=False, max_epochs=2, progress_bar=False)
    out = capsys.readouterr().out
    assert "Stopped early: preempted (SIGTERM)" in out
    assert f"resume:     treadle demo --root {tmp_path} --resume" in out
    assert statuses == ["interrupted"]
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
