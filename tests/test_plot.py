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
from treadle.plot import MAX_RUNS, _centered_mean, _is_noisy, _panels, _table, plot_metrics
from treadle.run_logs import find_runs

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


def test_a_folder_of_versions_is_drawn_overlaid(tmp_path: Path) -> None:
    write_run(tmp_path, version=2)
    write_run(tmp_path, version=10, steps=30)
    (tmp_path / "treadle_logs" / "version_11").mkdir()  # no metrics.csv yet: skipped
    out = plot_metrics(tmp_path / "treadle_logs")
    assert out == tmp_path / "treadle_logs" / "curves.png"
    assert [run.label for run in find_runs(tmp_path / "treadle_logs")] == ["version_2", "version_10"]
    assert [run.label for run in find_runs(tmp_path)] == ["treadle_logs/version_2", "treadle_logs/version_10"]


def test_too_many_runs_are_listed_for_a_choice(tmp_path: Path) -> None:
    for version in range(MAX_RUNS + 1):
        write_run(tmp_path, version=version, steps=3)
    with pytest.raises(
        ValueError, match=rf"(?s)holds {MAX_RUNS + 1} runs.*Pass one of them.*version_0\n.*version_10"
    ):
        plot_metrics(tmp_path)


def test_splits_of_one_metric_share_a_panel_and_single_values_go_to_the_table() -> None:
    assert _panels(["train_loss", "val_loss", "val_acc", "lr-AdamW", "loss/train", "loss/val"]) == {
        "loss": [("train_loss", "train"), ("val_loss", "val"), ("loss/train", "train"), ("loss/val", "val")],
        "val_acc": [("val_acc", "val")],
        "lr-AdamW": [("lr-AdamW", "")],
    }
    assert _panels(["loss", "val_loss"]) == {"loss": [("loss", ""), ("val_loss", "val")]}


def test_a_demo_like_run_draws_loss_panels_and_a_table(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, version=0, flush_logs_every_n_steps=50)
    logger.log_hyperparams({"lr": 0.1, "model": {"width": 64}})
    for step in range(60):
        logger.log_metrics({"train_loss": 1 / (step + 1), "epoch": step // 20}, step=step)
        if step % 20 == 19:
            logger.log_metrics({"val_loss": 1.2 / (step + 1), "val_acc": step / 60}, step=step)
    logger.log_metrics({"test_acc": 0.9}, step=60)  # a final score: once
    logger.finalize("success")
    runs = find_runs(logger.log_dir)
    assert _table(runs, ["test_acc"], with_hparams=True) == [
        ("test_acc", ["0.9"]),
        ("lr", ["0.1"]),
        ("model/width", ["64"]),
    ]
    out = plot_metrics(logger.log_dir)
    # Three panels (loss with train and val, val_acc, the table): "epoch" and "test_acc" get none.
    width, height = png_size(out)
    assert width > 1000 and height < 1000
    one_panel = plot_metrics(logger.log_dir, output=tmp_path / "loss.png", metrics=["train_loss", "val_loss"])
    assert png_size(one_panel)[0] < width


def test_tensorboard_event_files_are_read(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from treadle.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path, version=0)
    for step in range(30):
        logger.log_metrics({"loss/train": 1 / (step + 1)}, step=step)
        if step % 10 == 9:
            logger.log_metrics({"loss/val": 1.1 / (step + 1)}, step=step)
    logger.finalize("success")
    (run,) = find_runs(tmp_path)
    assert run.source == "tensorboard" and run.label == "treadle_logs/version_0"
    assert run.series["loss/val"] == [
        (9, pytest.approx(0.11)),
        (19, pytest.approx(0.055)),
        (29, pytest.approx(1.1 / 30)),
    ]
    assert len(run.series["loss/train"]) == 30
    assert plot_metrics(logger.log_dir) == Path(logger.log_dir) / "curves.png"


def test_output_path_format_and_metric_selection(tmp_path: Path) -> None:
    logger = write_run(tmp_path)
    one = plot_metrics(logger.log_dir, output=tmp_path / "out" / "loss.png", metrics=["train/loss"])
    assert png_size(one)[0] < png_size(plot_metrics(logger.log_dir))[0]  # one panel is narrower than two
    svg = plot_metrics(logger.log_dir, output=tmp_path / "curves.svg")
    assert svg.read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match=r"output='.*curves.jpg'\) must end in one of: .png, .svg, .pdf"):
        plot_metrics(logger.log_dir, output=tmp_path / "curves.jpg")
    with pytest.raises(ValueError, match=r"'val/loss' is not a metric of .*Choose from: train/loss, val/acc"):
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
        FileNotFoundError,
        match=r"No metrics.csv or TensorBoard event files in .*Pass the folder a logger wrote",
    ):
        plot_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="No metrics.csv or TensorBoard event files in"):
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
