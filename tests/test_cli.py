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


def test_plot_of_a_folder_without_a_log_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["plot", str(tmp_path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("treadle plot: error: ") and str(tmp_path) in err
    assert "Traceback" not in err


def test_plot_of_a_missing_folder_is_an_error_without_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    finished = subprocess.run(
        [sys.executable, "-m", "treadle", "plot", str(missing)], capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 2
    assert finished.stderr.startswith("treadle plot: error: ") and str(missing) in finished.stderr
    assert "Traceback" not in finished.stderr


def test_plot_of_an_unknown_metric_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = CSVLogger(tmp_path, name="run")
    logger.log_metrics({"train_loss": 1.0}, step=0)
    logger.finalize("success")
    with pytest.raises(SystemExit) as exited:
        main(["plot", str(Path(logger.log_dir)), "-m", "nope", "-o", str(tmp_path / "c.png")])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("treadle plot: error: ")


def test_plot_without_matplotlib_names_the_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = CSVLogger(tmp_path, name="run")
    logger.log_metrics({"train_loss": 1.0}, step=0)
    logger.finalize("success")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(SystemExit) as exited:
        main(["plot", str(Path(logger.log_dir)), "-o", str(tmp_path / "c.png")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("treadle plot: error: ") and "pip install" in err


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


@pytest.mark.parametrize("epochs", ["0", "-1", "two"])
def test_demo_max_epochs_must_be_a_positive_number(epochs: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Rejected by the parser, before any training starts (0 used to end in a traceback from run_demo).
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--max-epochs", epochs])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"--max-epochs: {epochs!r} must be a whole number of at least 1" in err
    assert "Traceback" not in err


def test_unknown_arguments_without_a_command_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--bogus"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "treadle: error: unrecognized arguments: --bogus\n"


def test_plot_help_says_where_the_curves_go_for_a_folder_of_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "treadle", "plot", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "LOG_DIR/curves.png for a folder of several runs" in " ".join(out.split())
    assert "TensorBoard event files" in out
