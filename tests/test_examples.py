"""The scripts in examples/ run to the end, quickly (smoke tests, each in its own interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_fabric_loop(tmp_path: Path) -> None:
    out = _run(
        str(EXAMPLES / "fabric_loop.py"),
        "--epochs",
        "2",
        "--output",
        str(tmp_path / "best.ckpt"),
        cwd=tmp_path,
    )
    assert out.count(" ms  loss ") == 16  # the timer callback: one line per iteration, 8 per epoch
    assert "is the best so far" in out and (tmp_path / "best.ckpt").exists()
    assert "final val_loss" in out


def test_tensor_parallel_on_two_cpu_processes_and_consolidate(tmp_path: Path) -> None:
    out = _run(str(EXAMPLES / "tensor_parallel.py"), "--iterations", "10", cwd=tmp_path)
    assert "mesh: 1 data parallel x 2 tensor parallel" in out
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("iteration")]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.5, out  # it learns the counting pattern
    _run("-m", "treadle", "consolidate", "checkpoints/tensor_parallel", "model.pt", cwd=tmp_path)
    import torch

    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["iteration"] == 9 and saved["model"]["output.weight"].shape == (256, 64)


def test_trainer_script_and_its_resume(tmp_path: Path) -> None:
    script = str(EXAMPLES / "trainer_script.py")
    out = _run(script, "--max-epochs", "2", "--root", str(tmp_path), "--no-progress-bar", cwd=tmp_path)
    assert "stopped: max_epochs=2 reached" in out
    assert {path.name for path in (tmp_path / "checkpoints").iterdir()} == {"last.ckpt"}
    out = _run(
        script, "--max-epochs", "3", "--root", str(tmp_path), "--no-progress-bar", "--resume", cwd=tmp_path
    )
    assert "epoch 2:" in out and "epoch 0:" not in out
    assert (tmp_path / "sine" / "version_0" / "metrics.csv").exists()


def test_examples_use_the_built_ins_and_do_not_shadow_them() -> None:
    # Regression: fabric_loop.py named its own callback IterationTimer (the built-in's name) and pointed to
    # an exercise our docs do not have; trainer_script.py re-implemented ModelCheckpoint(save_top_k=0).
    fabric_loop = (EXAMPLES / "fabric_loop.py").read_text()
    assert "class PrintIterationTime" in fabric_loop and "class IterationTimer" not in fabric_loop
    assert "exercise from the docs" not in fabric_loop
    trainer_script = (EXAMPLES / "trainer_script.py").read_text()
    assert "ModelCheckpoint(save_top_k=0)" in trainer_script and "class SaveLast" not in trainer_script
