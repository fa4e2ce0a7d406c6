"""CSVLogger: a run's metrics as one CSV file that any tool can open, and :func:`read_csv_metrics` to load
it back."""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import errno
import io
import json
import os
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from treadle.files import atomic_open
from treadle.loggers.base import FolderLogger, RunFolder, check_step, params_to_dict

__all__ = ["HPARAMS_FILE", "METRICS_FILE", "CSVExperiment", "CSVLogger", "read_csv_metrics"]

METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.json"
_STEP = "step"
# A file's inode, size and modification time: one of them changes when anyone writes or replaces it.
_Signature = tuple[int, int, int]


@dataclasses.dataclass
class _Row:
    step: int | None
    values: dict[str, int | float]


class CSVLogger(FolderLogger):
    """Write metrics to ``root_dir/name/version_N/metrics.csv`` and hyperparameters to ``hparams.json``.

    The CSV has a ``step`` column followed by one column per metric, sorted by name; a call without a step
    gets the logger's own count of such calls (0, 1, 2, ...), as in Lightning; a cell is empty when that metric was not logged in that row. Values are
    written exactly as Python prints them, so non-finite values read ``nan``, ``inf`` or ``-inf``.
    Consecutive ``log_metrics`` calls with the same step and different metrics are merged into one row.

    Rows are buffered and written every ``flush_logs_every_n_steps`` calls to :meth:`log_metrics` (with 1,
    every call writes at once), on :meth:`save` and :meth:`finalize`, and when the logger is garbage
    collected or the interpreter exits, so a loop that never calls :meth:`finalize` loses no rows (a
    process killed by a signal it does not handle still loses what was buffered). A call that adds metrics
    to the step of the row written last rewrites that row's line in place, so same-step metrics share a
    row even across a write. When a metric appears that the file has no column for, the file is
    rewritten with the wider header, earlier rows kept, and the new file replaces the old one atomically;
    otherwise rows are appended.

    If the version folder already holds a ``metrics.csv`` when the logger first logs (an explicit
    ``version`` used again), the logger warns and starts the file afresh: the old rows are replaced at its
    first write, never silently mixed with the new run's. To add to them instead, as a run resumed from a
    checkpoint wants, pass ``resume=True``.
    A pickled or copied logger starts with an empty buffer: the original writes the rows it buffered. When
    another writer (such a copy, or a second logger given the same version) has changed the file since this
    logger last wrote, the header is read again before appending, so every row lands under its column.

    See :class:`~treadle.loggers.base.RunFolder` for how the version folder is chosen. The first
    :meth:`log_metrics` call fixes the version and creates the folder, so that the next logger made on the
    same ``root_dir`` counts past it even before a row is written. The logger is rank-agnostic: Fabric
    calls it only on global rank 0, and a logger that never logs creates nothing.

    Args:
        root_dir: Folder that holds all experiments; ``~`` and ``$VAR`` are expanded.
        name: Experiment name: a folder under ``root_dir``. ``None`` or ``""`` for none: runs go to
            ``root_dir/version_<N>``.
        version: ``None`` for the next free ``version_<N>`` folder, an int ``N`` for ``version_<N>``, or a
            str used as the folder name.
        prefix: Prepended to every metric name with a ``/``: ``prefix="train"`` logs ``loss`` as
            ``train/loss``. ``""`` for none.
        flush_logs_every_n_steps: How many ``log_metrics`` calls to buffer before writing; 1 writes every
            call at once.
        resume: Add to the rows of an existing ``metrics.csv`` in the version folder (a run resumed from a
            checkpoint) instead of starting it afresh.

    Raises:
        TypeError: ``root_dir``, ``version``, ``prefix`` or ``resume`` has the wrong type.
        ValueError: ``name`` is blank, ``version`` is not a valid folder, ``root_dir`` names an unset
            environment variable, or ``flush_logs_every_n_steps`` is not a positive int.

    Example:
        >>> import tempfile
        >>> logger = CSVLogger(tempfile.mkdtemp(), flush_logs_every_n_steps=10)
        >>> logger.log_metrics({"loss": 0.5}, step=0)
        >>> logger.log_metrics({"loss": 0.25, "lr": 0.1}, step=1)
        >>> logger.finalize("success")
        >>> read_csv_metrics(Path(logger.log_dir) / METRICS_FILE)
        {'loss': [(0, 0.5), (1, 0.25)], 'lr': [(1, 0.1)]}
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        name: str | None = "treadle_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
        resume: bool = False,
    ) -> None:
        super().__init__(root_dir, name, version, prefix, owner="CSVLogger")
        if not isinstance(resume, bool):
            raise TypeError(
                f"CSVLogger(resume={resume!r}) must be True or False: True adds to an existing metrics.csv "
                f"(a resumed run), False starts it afresh."
            )
        if (
            isinstance(flush_logs_every_n_steps, bool)
            or not isinstance(flush_logs_every_n_steps, int)
            or flush_logs_every_n_steps < 1
        ):
            raise ValueError(
                f"CSVLogger(flush_logs_every_n_steps={flush_logs_every_n_steps!r}) must be a positive int. "
                f"Pass 1 to write every row at once, or a larger number to write less often (default 100)."
            )
        self._flush_every = flush_logs_every_n_steps
        self._calls_since_flush = 0
        self._hparams: dict[str, Any] = {}
        self._status: str | None = None
        self._folder_made = False
        self._resume = resume
        self._implicit_step = 0
        # The metrics.csv this run found in its folder and will replace at its first write; None when there
        # was none, or when resuming. Decided once, at the first log_metrics (or pickling).
        self._replaces: _Signature | None = None
        self._decided = False
        self._open_metrics_file()

    def _open_metrics_file(self) -> None:
        self._file = _MetricsFile(self._folder)
        self._file.replaces = self._replaces
        # The finalizer holds the buffer, not the logger, so the logger can still be collected; it runs
        # once, when the logger is collected or at interpreter exit, whichever comes first.
        weakref.finalize(self, _write_left_over_rows, self._file)

    def __getstate__(self) -> dict[str, Any]:
        # Fabric(strategy="ddp_spawn") pickles its loggers. The copy starts with an empty buffer and learns
        # the columns from the file, so rows buffered here are written once, by this logger.
        # The copy shares this logger's decision about an earlier run's metrics.csv: whichever of the two
        # writes first replaces that file, and the other then adds to the new one.
        self._claim_folder()
        state = self.__dict__.copy()
        del state["_file"]
        state["_calls_since_flush"] = 0
        state["_replaces"] = self._file.replaces
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open_metrics_file()

    @property
    def experiment(self) -> CSVExperiment:
        """The object that writes this logger's files, as Lightning's ``CSVLogger.experiment``: its
        ``log_dir``, ``metrics_file_path``, ``log_metrics``, ``log_hparams`` and ``save``."""
        return CSVExperiment(self)

    @property
    def status(self) -> str | None:
        """The status passed to :meth:`finalize`, or None while the run is going."""
        return self._status

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Buffer one row of scalar metrics; write buffered rows every ``flush_logs_every_n_steps`` calls.

        Args:
            metrics: Metric name to value: Python numbers, or tensors with one element.
            step: The global step, or None for this logger's count of step-less calls (0, 1, 2, ...).

        Raises:
            TypeError: ``step`` is not an int, or a value is not a number.
            ValueError: A metric name is empty, or is ``"step"`` with no prefix.
        """
        where = "CSVLogger.log_metrics"
        step = check_step(step, where)
        values = self._prefixed_metrics(metrics, where)
        if _STEP in values:
            raise ValueError(
                f"{where} got a metric named 'step', which is the CSV's step column. Rename the "
                f"metric (e.g. 'global_step') or pass the step as log_metrics(..., step=...)."
            )
        if not values:
            return
        if step is None:
            step = self._implicit_step
            self._implicit_step += 1
        if not self._folder_made:
            # Fix the version at first use rather than at first write, and claim it by creating the folder
            # now: the next logger made in this process (a sweep) or on this root_dir then counts past it,
            # instead of picking the same version before this one's first write creates the folder.
            self._claim_folder()
            self._folder.path.mkdir(parents=True, exist_ok=True)
            self._folder_made = True
        self._file.add(step, values)
        self._calls_since_flush += 1
        if self._calls_since_flush >= self._flush_every:
            self._flush()

    def log_hyperparams(self, params: Mapping[str, Any] | argparse.Namespace) -> None:
        """Merge ``params`` into the run's hyperparameters and rewrite ``hparams.json`` (indented JSON).

        Nested mappings, lists and dataclasses are kept as JSON structure; any other value that JSON
        cannot hold (a path, a dtype, ...) is written as its ``str()``.

        Args:
            params: A mapping of names to values, or an ``argparse.Namespace``.

        Raises:
            TypeError: ``params`` is neither a Mapping nor a Namespace.
        """
        self._hparams.update(params_to_dict(params, "CSVLogger.log_hyperparams"))
        folder = self._folder.path
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_jsonable(self._hparams), indent=2, default=str)
        try:
            with atomic_open(folder / HPARAMS_FILE, "w") as file:
                file.write(text + "\n")
        except OSError as error:
            reason = (
                "no space left on device" if error.errno == errno.ENOSPC else error.strerror or str(error)
            )
            raise type(error)(
                error.errno, f"CSVLogger could not write {folder / HPARAMS_FILE}: {reason}."
            ) from error

    def save(self) -> None:
        """Write all buffered rows to ``metrics.csv``."""
        self._flush()

    def finalize(self, status: str) -> None:
        """Write all buffered rows and remember ``status``; calling it again is harmless."""
        self._flush()
        self._status = status

    def _flush(self) -> None:
        self._calls_since_flush = 0
        self._file.write()

    def _claim_folder(self) -> None:
        """Fix the version, and decide once whether an earlier run's metrics.csv there is replaced."""
        if self._decided:
            return
        self._decided = True
        path = self._folder.resolve() / METRICS_FILE
        found = _signature(path)
        if found is None or found[1] == 0 or self._resume or not _written_by_csv_logger(path):
            return  # a file of another tool is never replaced: the first write refuses it, naming it
        warnings.warn(
            f"CSVLogger: {path} already holds metrics of an earlier run; this run starts the file afresh "
            f"(its rows are replaced at the first write). Pass CSVLogger(..., resume=True) to add to them "
            f"(a run resumed from a checkpoint), or version=None for a new version_<N> folder.",
            UserWarning,
            stacklevel=3,
        )
        self._file.replaces = found


class CSVExperiment:
    """What ``CSVLogger.experiment`` returns: the logger's writer, under the names Lightning's CSV
    experiment writer has, for code that reaches for ``logger.experiment``.

    Example:
        >>> import tempfile
        >>> writer = CSVLogger(tempfile.mkdtemp(), version=0).experiment
        >>> writer.log_metrics({"loss": 1.0}, step=0)
        >>> writer.save()
        >>> Path(writer.metrics_file_path).name
        'metrics.csv'
    """

    def __init__(self, logger: CSVLogger) -> None:
        self._logger = logger

    @property
    def log_dir(self) -> str:
        """The run folder."""
        return self._logger.log_dir

    @property
    def metrics_file_path(self) -> str:
        """The path of ``metrics.csv``."""
        return os.path.join(self._logger.log_dir, METRICS_FILE)

    def log_metrics(self, metrics_dict: Mapping[str, float], step: int | None = None) -> None:
        """Same as :meth:`CSVLogger.log_metrics`."""
        self._logger.log_metrics(metrics_dict, step)

    def log_hparams(self, params: Mapping[str, Any] | argparse.Namespace) -> None:
        """Same as :meth:`CSVLogger.log_hyperparams`."""
        self._logger.log_hyperparams(params)

    def save(self) -> None:
        """Same as :meth:`CSVLogger.save`."""
        self._logger.save()


class _MetricsFile:
    """The rows a `CSVLogger` has not written yet, and what it knows about its ``metrics.csv``.

    Kept apart from the logger so that the finalizer that writes left-over rows refers to this object
    only: a finalizer that refers to the logger would keep it alive forever.
    """

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder
        self.pending: list[_Row] = []
        # The metric columns of metrics.csv as it is on disk; None until this logger first writes.
        self.columns: list[str] | None = None
        # The row written last, which a call with the same step may still extend, and where its line
        # starts in the file. When `replace_tail`, pending[0] is that row with more metrics: it takes the
        # place of that line instead of being added after it.
        self.tail: _Row | None = None
        self.tail_offset = 0
        self.replace_tail = False
        # The file as this logger last left it. Another writer of the same file (a pickled copy in a
        # ddp_spawn child, a second logger given the same version) may have widened the header or added
        # rows since; then `columns` and `tail_offset` are stale and must be read again before writing.
        self.signature: _Signature | None = None
        # A forked child (a DataLoader worker) inherits this buffer; only the process that made it may
        # write it on exit, or rows would be written twice.
        self.pid = os.getpid()
        # An earlier run's file as it was when the logger found it: replaced at the first write if it is
        # still that file (a pickled copy may have replaced it already).
        self.replaces: _Signature | None = None

    def add(self, step: int | None, values: dict[str, int | float]) -> None:
        last = self.pending[-1] if self.pending else self.tail
        # Fabric.log sends one metric per call; merging same-step calls keeps one row per step.
        if last is None or step is None or last.step != step or not last.values.keys().isdisjoint(values):
            self.pending.append(_Row(step, values))
        elif self.pending:
            last.values.update(values)
        else:  # the row is in the file already: write it again, in its place, with the new metrics
            self.pending.append(_Row(step, {**last.values, **values}))
            self.replace_tail = True

    def write(self) -> None:
        if not self.pending:
            return
        path = self.folder.path / METRICS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.replaces is not None:
            if _signature(path) == self.replaces:  # still the earlier run's file: start it afresh
                self.columns = sorted(set().union(*(row.values.keys() for row in self.pending)))
                self._rewrite(path, None, self.columns)
                self.replace_tail = False
                self.replaces = None
                self._wrote(path)
                return
            self.replaces = None
        if self.columns is not None and _signature(path) != self.signature:
            self._forget_file()
        if self.replace_tail:
            # The tail is the file's last line: cut it, then write its merged row like any other. Should
            # that write fail, the merged row (all of the tail's values) is still pending: nothing is lost.
            with _named_errors(path, len(self.pending)), open(path, "rb+") as file:
                file.truncate(self.tail_offset)
            self.replace_tail = False
            self.tail = None
        if self.columns is None:
            self.columns = _existing_columns(path)
        on_disk = set(self.columns or ())
        needed = on_disk.union(*(row.values.keys() for row in self.pending))
        if self.columns is None or needed != on_disk:
            columns = sorted(needed)
            with _named_errors(path, len(self.pending)):
                self._rewrite(path, self.columns, columns)  # atomic: on failure the old file stays whole
            self.columns = columns
        else:
            self._append(path, _encode(self.pending, self.columns))
        self._wrote(path)

    def _append(self, path: Path, data: bytes) -> None:
        """Add whole rows to the file, or none: a failed write (a full disk) is cut back to the last row."""
        size = path.stat().st_size
        try:
            with open(path, "ab") as file:
                file.write(data)
        except OSError as error:
            with contextlib.suppress(OSError):  # if this fails, the next open repairs the torn last row
                os.truncate(path, size)
            stat = path.stat()
            self.signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            raise _named(error, path, len(self.pending)) from error

    def _wrote(self, path: Path) -> None:
        assert self.columns is not None  # set by every write path above
        self.tail = self.pending[-1]
        stat = path.stat()
        self.signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        self.tail_offset = stat.st_size - len(_encode([self.tail], self.columns))
        self.pending.clear()

    def _forget_file(self) -> None:
        """Someone else wrote the file: read its header again, and append rather than rewrite our tail."""
        self.columns = None
        if self.replace_tail:
            # pending[0] is the tail plus new metrics (disjoint, see `add`); the tail's line may have moved
            # or been rewritten, so write only the new metrics, as a row of their own with the same step.
            written = self.tail.values if self.tail is not None else {}
            merged = self.pending[0]
            new = {key: value for key, value in merged.values.items() if key not in written}
            self.pending[0] = _Row(merged.step, new)
            self.replace_tail = False
        self.tail = None

    def _rewrite(self, path: Path, old_columns: list[str] | None, columns: list[str]) -> None:
        header = [_STEP, *columns]
        with atomic_open(path, "w") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(header)
            if old_columns is not None:
                position = {column: i for i, column in enumerate(header)}
                targets = [position[column] for column in (_STEP, *old_columns)]
                with open(path, encoding="utf-8", newline="") as old:
                    reader = csv.reader(old)
                    next(reader, None)
                    for record in reader:
                        if not record:
                            continue
                        widened = [""] * len(header)
                        for target, cell in zip(targets, record, strict=False):
                            widened[target] = cell
                        writer.writerow(widened)
            writer.writerows(_cells(self.pending, columns))


def _signature(path: Path) -> _Signature | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _write_left_over_rows(file: _MetricsFile) -> None:
    """Write what a collected logger, or one still alive at interpreter exit, had buffered."""
    if not file.pending or file.pid != os.getpid():
        return
    try:
        file.write()
    except (OSError, ValueError) as exc:  # nobody is left to catch it: say what was lost
        warnings.warn(
            f"CSVLogger could not write its last {len(file.pending)} row(s) to "
            f"{file.folder.path / METRICS_FILE}: {exc}",
            RuntimeWarning,
            stacklevel=1,
        )


def read_csv_metrics(path: str | os.PathLike[str]) -> dict[str, list[tuple[int | None, float]]]:
    """Load a ``metrics.csv`` written by :class:`CSVLogger`: each metric's ``(step, value)`` points.

    Empty cells are skipped, so every list holds only the rows where that metric was logged, in file
    order. A row with an empty step gives ``None`` as its step. ``nan``/``inf`` cells become float values.

    Args:
        path: The CSV file.

    Returns:
        Metric name (in column order) to its list of ``(step, value)`` pairs.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A cell is not a number; the message names the file, line and column.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "metrics.csv"
        >>> _ = file.write_text("step,acc,loss\\n0,,1.5\\n1,0.5,nan\\n")
        >>> read_csv_metrics(file)
        {'acc': [(1, 0.5)], 'loss': [(0, 1.5), (1, nan)]}
    """
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None:
            return {}
        has_step = header[0] == _STEP
        names = header[1:] if has_step else header
        series: dict[str, list[tuple[int | None, float]]] = {name: [] for name in names}
        for record in reader:
            if not record:
                continue
            step: int | None = None
            if has_step and record[0] != "":
                step = _parse_step(record[0], path, reader.line_num)
            for name, cell in zip(names, record[1:] if has_step else record, strict=False):
                if cell == "":
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    raise ValueError(
                        f"{path}, line {reader.line_num}: column {name!r} holds {cell!r}, which is not a "
                        f"number. Fix or delete that row."
                    ) from None
                series[name].append((step, value))
    return series


def _parse_step(cell: str, path: Path, line: int) -> int:
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        as_float = float(cell)
    except ValueError:
        as_float = float("nan")
    if not as_float.is_integer():
        raise ValueError(
            f"{path}, line {line}: the step column holds {cell!r}, which is not an integer. Fix or delete "
            f"that row."
        )
    return int(as_float)


def _written_by_csv_logger(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", newline="") as file:
            header = next(csv.reader(file), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header is not None and header[:1] == [_STEP]


def _existing_columns(path: Path) -> list[str] | None:
    """The metric columns of an existing ``metrics.csv`` we will append to, or None if there is none."""
    try:
        with open(path, encoding="utf-8", newline="") as file:
            header = next(csv.reader(file), None)
    except FileNotFoundError:
        return None
    if header is None:
        return None
    if header[0] != _STEP:
        raise ValueError(
            f"{path} exists but was not written by CSVLogger: its first column is {header[0]!r}, not "
            f"'step'. Pass another version= to CSVLogger, or move the file away."
        )
    # A run killed mid-append (or a disk that filled up) can leave a torn last row, without its newline:
    # its cells may be cut short (0.9 of 0.95), so it is dropped rather than trusted.
    with open(path, "rb+") as raw:
        size = raw.seek(0, os.SEEK_END)
        raw.seek(max(0, size - 65536))
        tail = raw.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            end = size - len(tail) + cut + 1
            if cut == -1:  # only a header without its newline (or a row too long to judge): keep it
                raw.write(b"\n")
            else:
                torn = tail[cut + 1 :].decode("utf-8", "replace")
                raw.truncate(end)
                warnings.warn(
                    f"CSVLogger: the last row of {path} was torn (written in part, no newline: {torn!r}), "
                    f"probably by a run that was killed or ran out of disk; it was removed.",
                    UserWarning,
                    stacklevel=2,
                )
    return header[1:]


@contextlib.contextmanager
def _named_errors(path: Path, rows: int) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise _named(error, path, rows) from error


def _named(error: OSError, path: Path, rows: int) -> OSError:
    """``error`` again, saying which file could not be written and that the rows are kept."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason = "no space left on device"
    message = (
        f"CSVLogger could not write {rows} row(s) to {path}: {reason}. The rows stay buffered and the file "
        f"holds whole rows only; free the problem (e.g. disk space) and call save() again."
    )
    # No filename argument: OSError would print it a second time after the message.
    return type(error)(error.errno, message) if error.errno is not None else OSError(message)


def _encode(rows: Iterable[_Row], columns: list[str]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(_cells(rows, columns))
    return text.getvalue().encode("utf-8")


def _cells(rows: Iterable[_Row], columns: list[str]) -> Iterable[list[str]]:
    for row in rows:
        step = "" if row.step is None else str(row.step)
        # repr() of a float round-trips exactly and prints nan/inf/-inf as such.
        yield [step, *("" if (v := row.values.get(c)) is None else repr(v) for c in columns)]


def _jsonable(value: Any) -> Any:
    """Turn containers into JSON structure with str keys; leave the rest to json's ``default=str``."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(item) for item in value]
    return value
