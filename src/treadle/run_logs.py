"""Finding the runs in a folder and reading their metric series, from a CSV log or TensorBoard event files.

What ``treadle plot`` draws from. A run is a folder holding a ``metrics.csv`` (:class:`~treadle.loggers.
CSVLogger`) or ``events.out.tfevents.*`` files (:class:`~treadle.loggers.TensorBoardLogger`, or any
TensorBoard writer); when a folder holds both, the CSV is read (the two hold the same values).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from treadle.loggers.csv import HPARAMS_FILE, METRICS_FILE, read_csv_metrics
from treadle.optional import require

__all__ = ["RunLog", "Series", "find_runs"]

Series = list[tuple[int | None, float]]
"""One metric's ``(step, value)`` points in logging order; the step is None where none was logged."""

_EVENT_FILE = "events.out.tfevents."
# How deep under the folder given to look for runs: root_dir/name/version_N/sub_dir is three levels.
_SEARCH_DEPTH = 3
_NUMBER = re.compile(r"(\d+)")


@dataclasses.dataclass
class RunLog:
    """One run's logged metrics.

    Attributes:
        label: How the run is named in a plot: its folder relative to the folder searched (``version_3``,
            ``exp/version_0``), or the folder's own name when that folder is the run.
        folder: The run's folder.
        series: Metric name to its points, in the order the names were first logged.
        hparams: The run's ``hparams.json`` (written by ``CSVLogger.log_hyperparams``), or empty.
        source: ``"csv"`` or ``"tensorboard"``.
    """

    label: str
    folder: Path
    series: dict[str, Series]
    hparams: dict[str, Any]
    source: str


def find_runs(folder: str | os.PathLike[str]) -> list[RunLog]:
    """The runs in ``folder``: the folder itself if it is a run, else the runs below it (up to three
    levels down, e.g. ``root_dir/name/version_N``), in order of name with numbers compared as numbers
    (``version_2`` before ``version_10``).

    Args:
        folder: A run folder, or a folder of runs.

    Returns:
        The runs found; an empty list when there is none.

    Raises:
        ModuleNotFoundError: A run has only TensorBoard event files and ``tensorboard`` is not installed;
            the message gives the ``pip install`` command.
        ValueError: A ``metrics.csv`` holds a cell that is not a number (the message names file and line).

    Example:
        >>> find_runs("/no/such/folder")
        []
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [root] if _is_run(root) else sorted(_runs_below(root, _SEARCH_DEPTH), key=_natural_key)
    return [_read_run(run, run.name if run == root else run.relative_to(root).as_posix()) for run in found]


def _is_run(folder: Path) -> bool:
    if (folder / METRICS_FILE).is_file():
        return True
    try:
        return any(entry.name.startswith(_EVENT_FILE) and entry.is_file() for entry in os.scandir(folder))
    except OSError:
        return False


def _runs_below(folder: Path, depth: int) -> list[Path]:
    if depth == 0:
        return []
    runs: list[Path] = []
    try:
        children = [Path(entry.path) for entry in os.scandir(folder) if entry.is_dir()]
    except OSError:
        return []
    for child in children:
        if _is_run(child):
            runs.append(child)
        # A run's folder may hold more runs (TensorBoardLogger's sub_dir): look inside it too.
        runs.extend(_runs_below(child, depth - 1))
    return runs


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in _NUMBER.split(path.as_posix())]


def _read_run(folder: Path, label: str) -> RunLog:
    hparams: dict[str, Any] = {}
    try:
        loaded = json.loads((folder / HPARAMS_FILE).read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            hparams = loaded
    except (OSError, ValueError):
        pass  # no hyperparameters, or a file being written: the curves do not need them
    if (folder / METRICS_FILE).is_file():
        return RunLog(label, folder, read_csv_metrics(folder / METRICS_FILE), hparams, "csv")
    return RunLog(label, folder, _read_event_files(folder), hparams, "tensorboard")


def _read_event_files(folder: Path) -> dict[str, Series]:
    require(
        "tensorboard", extra="tensorboard", feature=f"treadle plot of the TensorBoard event files in {folder}"
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # type: ignore[import-untyped]

    # size_guidance 0: every point, not TensorBoard's default sample of 10,000 per tag.
    events = EventAccumulator(os.fspath(folder), size_guidance={"scalars": 0})
    events.Reload()
    series: dict[str, Series] = {}
    for tag in events.Tags().get("scalars", []):
        points = sorted(events.Scalars(tag), key=lambda event: (event.step, event.wall_time))
        series[tag] = [(int(event.step), float(event.value)) for event in points]
    return series
