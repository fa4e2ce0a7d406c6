from __future__ import annotations

import math
import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from treadle.loggers import CSVLogger

pytest.importorskip("matplotlib")
from treadle.plot import _centered_mean, _is_noisy, plot_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # IHDR comes first
    return width, height


def write_run(root: Path, version: int | None = None, steps: int = 200) -> CSVLogger:
    """A noisy train loss every step, and a validation metric that appears half-way (a new column)."""
    rng = random.Random(0)
    logger = CSVLogger(root, version=version, flush_logs_every_n_steps=16)
    for step in range(steps):
        logger.log_metrics({"train/loss": 2 * math.exp(-step / 50) + 0.1 + 0.2 * rng.random()}, step=step)
        if step >= steps // 2 and step % 10 == 9:
            logger.log_metrics({"val/acc": 1 - math.exp(-step / 80)}, step=step)
    logger.finalize("success")
    return logger


def test_png_from_a_run_with_a_column_added_mid_run(tmp_path: Path) -> None:
    logger = write_run(tmp_path)
    out = plot_metrics(logger.log_dir)
    assert out == Path(logger.log_dir) / "curves.png"
    assert out.stat().st_size > 10_000
    width, height = png_size(out)
    assert width > 800 and height > 300
    assert sorted(p.name for p in Path(logger.log_dir).iterdir()) == ["curves.png", "metrics.csv"]


def test_experiment_folder_uses_the_highest_version(tmp_path: Path) -> None:
    write_run(tmp_path, version=2)
    write_run(tmp_path, version=10, steps=30)
    (tmp_path / "treadle_logs" / "version_11").mkdir()  # no metrics.csv yet: skipped
    out = plot_metrics(tmp_path / "treadle_logs")
    assert out == tmp_path / "treadle_logs" / "version_10" / "curves.png"


def test_output_path_format_and_metric_selection(tmp_path: Path) -> None:
    logger = write_run(tmp_path)
    one = plot_metrics(logger.log_dir, output=tmp_path / "out" / "loss.png", metrics=["train/loss"])
    assert png_size(one)[0] < png_size(plot_metrics(logger.log_dir))[0]  # one panel is narrower than two
    svg = plot_metrics(logger.log_dir, output=tmp_path / "curves.svg")
    assert svg.read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match=r"output='.*curves.jpg'\) must end in one of: .png, .svg, .pdf"):
        plot_metrics(logger.log_dir, output=tmp_path / "curves.jpg")
    with pytest.raises(ValueError, match=r"'val/loss' is not a column of .*Choose from: train/loss, val/acc"):
        plot_metrics(logger.log_dir, metrics=["train/loss", "val/loss"])


@pytest.mark.parametrize("metrics", [[], ()])
def test_an_empty_metric_list_is_a_clear_error(tmp_path: Path, metrics: list[str] | tuple[str, ...]) -> None:
    # Used to fail deep inside matplotlib (a figure with no panels).
    logger = write_run(tmp_path, steps=30)
    with pytest.raises(
        ValueError, match=r"metrics=(\[\]|\(\))\) names no metric to draw\. Leave metrics=None"
    ):
        plot_metrics(logger.log_dir, metrics=metrics)
    assert not (Path(logger.log_dir) / "curves.png").exists()


def test_no_csv_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"No metrics.csv in .*version_<N>.*Pass the folder a CSVLogger wrote"
    ):
        plot_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="No metrics.csv in"):
        plot_metrics(tmp_path / "missing")
    (tmp_path / "metrics.csv").write_text("step,loss\n")
    with pytest.raises(ValueError, match=r"holds no metric values yet"):
        plot_metrics(tmp_path)


def test_non_finite_values_and_missing_steps_still_plot(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(
        "step,loss,big\n"
        + "".join(f",{v},{10.0 ** (i % 6)}\n" for i, v in enumerate([1, 0.5, "nan", "inf", 0.2]))
    )
    assert png_size(plot_metrics(tmp_path))[0] > 0


def test_missing_matplotlib_gives_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = write_run(tmp_path, steps=5)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(
        ModuleNotFoundError, match=r"^treadle plot needs `matplotlib`.*pip install 'treadle\[plot\]'$"
    ):
        plot_metrics(logger.log_dir)
    assert not (Path(logger.log_dir) / "curves.png").exists()


def test_plotting_leaves_pyplot_and_the_backend_alone(tmp_path: Path) -> None:
    write_run(tmp_path, steps=5)
    script = textwrap.dedent(
        f"""
        import sys
        from treadle.plot import plot_metrics
        plot_metrics({os.fspath(tmp_path / "treadle_logs")!r})
        assert "matplotlib.pyplot" not in sys.modules
        import matplotlib
        assert matplotlib.get_backend().lower() == "svg", matplotlib.get_backend()  # the user's choice stands
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "MPLBACKEND": "svg"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_smoothing_is_centred_and_only_for_noisy_series() -> None:
    line = [float(i) for i in range(100)]
    smoothed, window = _centered_mean(line)
    assert window == 5
    assert smoothed[2:-2] == pytest.approx(line[2:-2])  # no lag on a straight line
    assert not _is_noisy([0.1 * 0.99**i for i in range(100)])  # a schedule
    rng = random.Random(0)
    assert _is_noisy([math.exp(-i / 30) + 0.05 * rng.random() for i in range(100)])
    assert not _is_noisy([1.0, 2.0, 1.0])  # too short to bother
