"""Draw the curves of a run's ``metrics.csv`` (written by :class:`~treadle.loggers.CSVLogger`) to an image.

matplotlib is optional and imported only when :func:`plot_metrics` runs.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from treadle.files import atomic_open
from treadle.loggers.base import version_folders
from treadle.loggers.csv import METRICS_FILE, read_csv_metrics
from treadle.optional import require

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_metrics"]

_FORMATS: tuple[Literal["png", "svg", "pdf"], ...] = ("png", "svg", "pdf")
# From this many points on, a noisy curve is drawn faint with a smoothed one over it; shorter series
# (typically per-epoch validation metrics) are drawn as they are, with markers.
_SMOOTH_FROM = 20


def plot_metrics(
    log_dir: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    metrics: Sequence[str] | None = None,
) -> Path:
    """Draw one panel per metric of a run's ``metrics.csv``, against the step, and save the figure.

    Long, noisy series (from 20 points, with visible jitter) are drawn as a faint raw line under a
    smoothed one: a centred moving mean over about 1/25 of the points, so it does not lag. Short series
    (per-epoch validation metrics, typically) get markers. A panel whose
    values are all positive and span more than two orders of magnitude gets a log y axis. Non-finite
    values leave a gap in the line and are marked with a red x along the top of the panel. Points logged
    without a step are placed by their position instead.

    The figure is drawn without pyplot, so it needs no display and leaves matplotlib's global backend and
    figure list untouched. The file is written atomically.

    Args:
        log_dir: A run folder holding ``metrics.csv`` (e.g. ``logs/treadle_logs/version_3``), or an
            experiment folder (``logs/treadle_logs``), in which case the highest ``version_<N>`` that holds
            a ``metrics.csv`` is used.
        output: Where to save; the suffix picks the format (``.png``, ``.svg`` or ``.pdf``). Default:
            ``curves.png`` next to the ``metrics.csv``.
        metrics: The metric columns to draw, in this order. Default: all of them.

    Returns:
        The path of the saved image.

    Raises:
        FileNotFoundError: No ``metrics.csv`` in ``log_dir`` or its ``version_<N>`` folders.
        ValueError: ``metrics`` is empty or names a column the file does not have, the file holds no
            values, or ``output`` has an unsupported suffix.
        ModuleNotFoundError: matplotlib is not installed; the message gives the ``pip install`` command.

    Example:
        >>> from treadle.plot import plot_metrics
        >>> plot_metrics("logs/treadle_logs")  # doctest: +SKIP
        PosixPath('logs/treadle_logs/version_0/curves.png')
    """
    csv_path = _find_metrics_csv(Path(log_dir))
    out = Path(output) if output is not None else csv_path.parent / "curves.png"
    image_format = out.suffix.lower().lstrip(".")
    if image_format not in _FORMATS:
        raise ValueError(
            f"plot_metrics(output={os.fspath(out)!r}) must end in one of: "
            f"{', '.join('.' + f for f in _FORMATS)}. Pass e.g. output='curves.png'."
        )
    series = read_csv_metrics(csv_path)
    if metrics is None:
        names = [name for name, points in series.items() if points]
        if not names:
            raise ValueError(
                f"{csv_path} holds no metric values yet. Log some with CSVLogger.log_metrics and call "
                f"save() (or finalize()) before plotting."
            )
    else:
        if isinstance(metrics, str):
            metrics = [metrics]
        if not metrics:
            raise ValueError(
                f"plot_metrics(metrics={metrics!r}) names no metric to draw. Leave metrics=None to draw every "
                f"column, or name some of: {', '.join(series) or '(none)'}."
            )
        unknown = [name for name in metrics if name not in series]
        if unknown:
            raise ValueError(
                f"plot_metrics(metrics={list(metrics)!r}): {unknown[0]!r} is not a column of {csv_path}. "
                f"Choose from: {', '.join(series) or '(none)'}."
            )
        names = list(metrics)

    require("matplotlib", extra="plot", feature="treadle plot")
    from matplotlib.figure import Figure

    columns = 1 if len(names) == 1 else 2 if len(names) <= 4 else 3
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(5.5 * columns, 3.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        _draw_metric(ax, name, series[name])
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    figure.suptitle(f"{csv_path.parent.parent.name}/{csv_path.parent.name}", fontsize="medium")

    with atomic_open(out, "wb") as file:
        figure.savefig(file, format=image_format, dpi=120)
    return out


def _find_metrics_csv(log_dir: Path) -> Path:
    direct = log_dir / METRICS_FILE
    if direct.is_file():
        return direct
    if log_dir.is_dir():
        candidates = {n: folder / METRICS_FILE for n, folder in version_folders(log_dir).items()}
        with_metrics = [n for n, csv_path in candidates.items() if csv_path.is_file()]
        if with_metrics:
            return candidates[max(with_metrics)]
    raise FileNotFoundError(
        f"No {METRICS_FILE} in {log_dir} or in a version_<N> folder under it. Pass the folder a CSVLogger "
        f"wrote to (its log_dir, e.g. 'logs/treadle_logs/version_0'), and make sure the logger was saved "
        f"or finalized."
    )


def _draw_metric(ax: Axes, name: str, points: list[tuple[int | None, float]]) -> None:
    from matplotlib.ticker import MaxNLocator

    by_position = any(step is None for step, _ in points)
    xs = [i if by_position or step is None else step for i, (step, _) in enumerate(points)]
    raw = [v if math.isfinite(v) else math.nan for _, v in points]  # NaN leaves a gap in the line
    finite_x = [x for x, v in zip(xs, raw, strict=True) if not math.isnan(v)]
    finite_y = [v for v in raw if not math.isnan(v)]
    broken_x = [x for x, v in zip(xs, raw, strict=True) if math.isnan(v)]

    title = name
    if finite_y:
        title += f"\nlast {points[-1][1]:.4g}   min {min(finite_y):.4g}   max {max(finite_y):.4g}"
        if min(finite_y) > 0 and max(finite_y) / min(finite_y) > 100:
            ax.set_yscale("log")
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("log call" if by_position else "step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)

    if not finite_y:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    elif _is_noisy(finite_y):
        smoothed, window = _centered_mean(finite_y)
        ax.plot(xs, raw, color="C0", alpha=0.3, linewidth=0.8, label="raw")
        ax.plot(finite_x, smoothed, color="C0", linewidth=1.8, label=f"mean of {window}")
    elif len(points) < _SMOOTH_FROM:
        ax.plot(xs, raw, color="C0", linewidth=1.5, marker="o", markersize=3.5)
    else:
        ax.plot(xs, raw, color="C0", linewidth=1.5)
    if broken_x:
        # A NaN or inf loss is the thing to notice in a run: mark where, along the top edge.
        ax.plot(
            broken_x,
            [0.97] * len(broken_x),
            linestyle="none",
            marker="x",
            color="C3",
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            label=f"nan/inf ({len(broken_x)})",
        )
    if ax.get_legend_handles_labels()[1]:
        ax.legend(loc="best", fontsize="small", frameon=False)


def _is_noisy(values: Sequence[float]) -> bool:
    """Whether point-to-point jitter is visible at the panel's scale (a smooth schedule such as a learning
    rate is not: smoothing it would only blur it). Medians and percentiles, so that a loss spike or a
    divergence at the end does not hide the noise of the rest."""
    if len(values) < _SMOOTH_FROM:
        return False
    ordered = sorted(values)
    spread = ordered[len(ordered) * 95 // 100] - ordered[len(ordered) * 5 // 100]
    triples = zip(values, values[1:], values[2:], strict=False)
    jitter = statistics.median(abs(b - (a + c) / 2) for a, b, c in triples)
    return spread > 0 and jitter / spread > 0.002


def _centered_mean(values: Sequence[float]) -> tuple[list[float], int]:
    """Each point replaced by the mean of the ``window`` points centred on it (fewer at the ends).

    Centred, unlike TensorBoard's exponential average, so the smoothed curve does not lag behind the raw
    one; the window is about 1/25 of the series: light for 100 points, strong for 10,000.
    """
    half = max(1, len(values) // 50)
    totals = [0.0]
    for value in values:
        totals.append(totals[-1] + value)
    smoothed = []
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i + half + 1)
        smoothed.append((totals[hi] - totals[lo]) / (hi - lo))
    return smoothed, 2 * half + 1
