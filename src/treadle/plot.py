"""Draw the curves of one run, or of several runs overlaid, to an image: ``treadle plot``.

Reads what :class:`~treadle.loggers.CSVLogger` and :class:`~treadle.loggers.TensorBoardLogger` write (see
:mod:`treadle.run_logs`). matplotlib is optional and imported only when :func:`plot_metrics` runs.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from treadle.files import atomic_open
from treadle.optional import require
from treadle.run_logs import RunLog, Series, find_runs

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["MAX_RUNS", "plot_metrics"]

_FORMATS: tuple[Literal["png", "svg", "pdf"], ...] = ("png", "svg", "pdf")
# From this many points on, a noisy curve is drawn faint with a smoothed one over it; shorter series
# (typically per-epoch validation metrics) are drawn as they are, with markers.
_SMOOTH_FROM = 20
MAX_RUNS = 10
"""More runs than this in one figure cannot be told apart: plot_metrics lists them and asks for a choice."""
# A metric's split, written before its name (train_loss, val/acc) or after it (loss/train, TensorBoard
# style): the metrics of one name share a panel, one line per split.
_SPLITS = ("train", "training", "val", "valid", "validation", "test")
# Counters that every Trainer row carries; a panel of them shows nothing about the model.
_COUNTERS = ("epoch", "step", "global_step", "trainer/global_step")
_LINESTYLES = {"train": "-", "training": "-", "val": "--", "valid": "--", "validation": "--", "test": ":"}
_TABLE_ROWS = 14


def plot_metrics(
    log_dir: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    metrics: Sequence[str] | None = None,
) -> Path:
    """Draw a run's curves (or several runs', overlaid) against the step, and save the figure.

    One panel per metric name, with the splits of that name on the same axes: ``train_loss`` and
    ``val_loss`` (or ``train/loss`` and ``val/loss``, or TensorBoard's ``loss/train`` and ``loss/val``)
    are one "loss" panel, train solid, validation dashed. A folder holding several runs (the
    ``version_<N>`` folders of an experiment, or experiments of a root folder) draws them overlaid, one
    colour per run; more than :data:`MAX_RUNS` is an error that lists them. Metrics logged once
    (final test scores, ``hp_metric``) and the run's hyperparameters (``hparams.json``) go in a small
    table instead of a panel with one dot; the ``epoch``/``step`` counters are left out unless asked for.

    Long, noisy series (from 20 points, with visible jitter) are drawn as a faint raw line under a
    smoothed one: a centred moving mean over about 1/25 of the points, so it does not lag. Short series
    get markers. A panel whose values are all positive and span more than two orders of magnitude gets a
    log y axis. Non-finite values leave a gap and are marked with a red x along the top of the panel.
    Points logged without a step are placed by their position instead.

    The figure is drawn without pyplot, so it needs no display and leaves matplotlib's global backend and
    figure list untouched. The file is written atomically.

    Args:
        log_dir: A run folder (holding ``metrics.csv`` or TensorBoard event files), or a folder of runs.
        output: Where to save; the suffix picks the format (``.png``, ``.svg`` or ``.pdf``). Default:
            ``curves.png`` in the run folder, or in ``log_dir`` for several runs.
        metrics: The metrics to draw, by their logged names, in this order. Default: all of them.

    Returns:
        The path of the saved image.

    Raises:
        FileNotFoundError: ``log_dir`` holds no run.
        ValueError: ``metrics`` is empty or names a metric no run has, the runs hold no values, there are
            more than :data:`MAX_RUNS` runs, or ``output`` has an unsupported suffix.
        ModuleNotFoundError: matplotlib (or, for event files, tensorboard) is not installed; the message
            gives the ``pip install`` command.

    Example:
        >>> from treadle.plot import plot_metrics
        >>> plot_metrics("logs/treadle_logs/version_0")  # doctest: +SKIP
        PosixPath('logs/treadle_logs/version_0/curves.png')
    """
    folder = Path(log_dir)
    if output is not None:
        _check_format(Path(output))
    runs = find_runs(folder)
    if not runs:
        raise FileNotFoundError(
            f"No metrics.csv or TensorBoard event files in {folder}, or in the folders under it. Pass the "
            f"folder a logger wrote to (its log_dir, e.g. 'logs/treadle_logs/version_0') or a folder of "
            f"such runs, and make sure the logger was saved or finalized."
        )
    if len(runs) > MAX_RUNS:
        listed = "\n".join(f"  {run.folder}" for run in runs)
        raise ValueError(
            f"{folder} holds {len(runs)} runs; more than {MAX_RUNS} in one figure cannot be told apart. Pass "
            f"one of them, or a folder holding fewer:\n{listed}"
        )
    out = (
        Path(output) if output is not None else (runs[0].folder if len(runs) == 1 else folder) / "curves.png"
    )
    image_format = _check_format(out)
    names = _metric_names(runs, metrics, folder)
    curves = [name for name in names if max(len(run.series.get(name, [])) for run in runs) > 1]
    once = [name for name in names if name not in curves]
    if metrics is None:
        curves = [name for name in curves if name not in _COUNTERS]
    panels = _panels(curves)
    table = _table(runs, once, with_hparams=metrics is None)
    if not panels and not table:
        raise ValueError(f"The runs in {folder} hold no metric values to draw yet.")

    require("matplotlib", extra="plot", feature="treadle plot")
    from matplotlib.figure import Figure

    count = len(panels) + (1 if table else 0)
    columns = 1 if count == 1 else 2 if count <= 4 else 3
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(5.5 * columns, 3.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (family, members) in zip(axes, panels.items(), strict=False):
        _draw_panel(ax, family, members, runs)
    if table:
        _draw_table(axes[len(panels)], table, runs)
    for ax in axes[count:]:
        ax.set_visible(False)
    title = runs[0].label if len(runs) == 1 else f"{len(runs)} runs in {folder.name or folder}"
    figure.suptitle(title, fontsize="medium")

    with atomic_open(out, "wb") as file:
        figure.savefig(file, format=image_format, dpi=120)
    return out


def _check_format(out: Path) -> Literal["png", "svg", "pdf"]:
    image_format = out.suffix.lower().lstrip(".")
    for known in _FORMATS:
        if image_format == known:
            return known
    raise ValueError(
        f"plot_metrics(output={os.fspath(out)!r}) must end in one of: "
        f"{', '.join('.' + f for f in _FORMATS)}. Pass e.g. output='curves.png'."
    )


def _metric_names(runs: list[RunLog], metrics: Sequence[str] | None, folder: Path) -> list[str]:
    known: dict[str, None] = {}
    for run in runs:
        known.update(dict.fromkeys(name for name, points in run.series.items() if points))
    everything = {name: None for run in runs for name in run.series}
    where = runs[0].folder if len(runs) == 1 else folder
    if metrics is None:
        if not known:
            raise ValueError(
                f"{where} holds no metric values yet. Log some with CSVLogger.log_metrics and call save() "
                f"(or finalize()) before plotting."
            )
        return list(known)
    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise ValueError(
            f"plot_metrics(metrics={metrics!r}) names no metric to draw. Leave metrics=None to draw every "
            f"metric, or name some of: {', '.join(everything) or '(none)'}."
        )
    unknown = [name for name in metrics if name not in everything]
    if unknown:
        raise ValueError(
            f"plot_metrics(metrics={list(metrics)!r}): {unknown[0]!r} is not a metric of {where}. "
            f"Choose from: {', '.join(everything) or '(none)'}."
        )
    return list(metrics)


def _split(name: str) -> tuple[str, str]:
    """``(family, split)``: ``val_loss`` -> ``("loss", "val")``, ``loss/train`` -> ``("loss", "train")``,
    ``lr`` -> ``("lr", "")``."""
    for split in _SPLITS:
        for separator in ("_", "/"):
            if name.startswith(split + separator) and len(name) > len(split) + 1:
                return name[len(split) + 1 :], split
            if separator == "/" and name.endswith(separator + split) and len(name) > len(split) + 1:
                return name[: -len(split) - 1], split
    return name, ""


def _panels(names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Panel title to its ``(metric, split)`` lines; a metric shares a panel only with other splits of its
    own name, so ``val_acc`` alone stays a panel titled ``val_acc``."""
    families: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        family, split = _split(name)
        families.setdefault(family, []).append((name, split))
    panels: dict[str, list[tuple[str, str]]] = {}
    # Losses first: they are what one looks at first; the rest keep the order they were logged in.
    for family, members in sorted(families.items(), key=lambda item: "loss" not in item[0].lower()):
        if len(members) == 1:
            panels[members[0][0]] = members
        else:
            panels[family] = members
    return panels


def _table(runs: list[RunLog], once: list[str], with_hparams: bool) -> list[tuple[str, list[str]]]:
    """Rows of ``(name, one cell per run)``: metrics logged once, then (for one run) its hyperparameters."""
    rows = [
        (name, [_cell(run.series[name][-1][1]) if run.series.get(name) else "" for run in runs])
        for name in once
    ]
    if with_hparams and len(runs) == 1:
        flat = _flatten(runs[0].hparams)
        rows += [(name, [_cell(value)]) for name, value in flat.items()]
    return rows[:_TABLE_ROWS]


def _flatten(params: dict[str, Any], parent: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{parent}/{key}" if parent else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _draw_panel(ax: Axes, title: str, members: list[tuple[str, str]], runs: list[RunLog]) -> None:
    from matplotlib.ticker import MaxNLocator

    lines = [(run_index, run, name, split) for run_index, run in enumerate(runs) for name, split in members]
    lines = [line for line in lines if line[1].series.get(line[2])]
    finite_all: list[float] = []
    by_position = False
    for run_index, run, name, split in lines:
        points = run.series[name]
        # One colour per run when runs are overlaid; one per split within a single run.
        colour = f"C{run_index % 10}" if len(runs) > 1 else f"C{members.index((name, split)) % 10}"
        style = _LINESTYLES.get(split, "-") if len(runs) > 1 else "-"
        label = split or name if len(members) > 1 else ""
        if len(runs) > 1:
            label = f"{run.label} {label}".strip()
        if label and math.isfinite(points[-1][1]):
            label += f" (last {points[-1][1]:.4g})"
        finite_all += _draw_series(ax, points, colour, style, label)
        by_position = by_position or any(step is None for step, _ in points)
    if len(lines) == 1:
        points = lines[0][1].series[lines[0][2]]
        finite = [v for _, v in points if math.isfinite(v)]
        if finite:
            title += f"\nlast {points[-1][1]:.4g}   min {min(finite):.4g}   max {max(finite):.4g}"
    if finite_all and min(finite_all) > 0 and max(finite_all) / min(finite_all) > 100:
        ax.set_yscale("log")
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("log call" if by_position else "step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if not finite_all:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(loc="best", fontsize="small", frameon=False)


def _draw_series(ax: Axes, points: Series, colour: str, style: str, label: str) -> list[float]:
    """Draw one metric's points; returns its finite values (for the panel's scale)."""
    by_position = any(step is None for step, _ in points)
    xs = [i if by_position or step is None else step for i, (step, _) in enumerate(points)]
    raw = [v if math.isfinite(v) else math.nan for _, v in points]  # NaN leaves a gap in the line
    finite_x = [x for x, v in zip(xs, raw, strict=True) if not math.isnan(v)]
    finite_y = [v for v in raw if not math.isnan(v)]
    broken_x = [x for x, v in zip(xs, raw, strict=True) if math.isnan(v)]
    if finite_y and _is_noisy(finite_y):
        smoothed, window = _centered_mean(finite_y)
        ax.plot(xs, raw, color=colour, linestyle=style, alpha=0.25, linewidth=0.8)
        smoothed_label = f"{label}, mean of {window}" if label else f"mean of {window}"
        ax.plot(finite_x, smoothed, color=colour, linestyle=style, linewidth=1.8, label=smoothed_label)
    elif finite_y:
        marker = "o" if len(points) < _SMOOTH_FROM else None
        ax.plot(
            xs,
            raw,
            color=colour,
            linestyle=style,
            linewidth=1.5,
            marker=marker,
            markersize=3.5,
            label=label or None,
        )
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
    return finite_y


def _draw_table(ax: Axes, rows: list[tuple[str, list[str]]], runs: list[RunLog]) -> None:
    ax.axis("off")
    ax.set_title("logged once" if len(runs) > 1 else "logged once, and hyperparameters", fontsize="medium")
    table = ax.table(
        cellText=[cells for _, cells in rows],
        rowLabels=[name for name, _ in rows],
        colLabels=[run.label for run in runs] if len(runs) > 1 else None,
        loc="upper center",
        cellLoc="left",
        colLoc="left",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.2)


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
