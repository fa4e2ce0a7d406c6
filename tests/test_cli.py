"""The `treadle` command: help, `plot`, and `python -m treadle` (demo and run have their own tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from treadle.cli import main
from treadle.loggers import CSVLogger


def test_plot_writes_the_curves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = CSVLogger(tmp_path, name="run")
    for step in range(30):
        logger.log_metrics({"train_loss": 1.0 / (step + 1)}, step=step)
    logger.finalize("success")
    assert main(["plot", str(Path(logger.log_dir)), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert f"curves written to {tmp_path / 'c.png'}" in capsys.readouterr().out


def test_plot_of_a_folder_without_a_log_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        main(["plot", str(tmp_path)])


def test_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "treadle", "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    for command in ("run", "demo", "plot"):
        assert command in out


def test_unknown_arguments_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plot", "x", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
