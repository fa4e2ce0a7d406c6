"""TensorBoardLogger: metrics and hyperparameters as TensorBoard event files.

TensorBoard is optional: it is imported when the logger first writes, never on import or construction.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from treadle.loggers.base import FolderLogger, check_step, join_prefix, params_to_dict
from treadle.optional import require

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["TensorBoardLogger"]

# SummaryWriter's own arguments, listed here so that a typo fails in __init__ without importing TensorBoard.
# log_dir is absent on purpose: the logger sets it from root_dir/name/version.
_WRITER_ARGUMENTS = ("comment", "purge_step", "max_queue", "flush_secs", "filename_suffix")


class TensorBoardLogger(FolderLogger):
    """Write metrics and hyperparameters to TensorBoard event files in ``root_dir/name/version_N``.

    The folder and version follow the same rules as :class:`~treadle.loggers.CSVLogger` (see
    :class:`~treadle.loggers.base.RunFolder`), with ``sub_dir`` below the version folder when given. View
    the logs with ``tensorboard --logdir <root_dir>``.

    TensorBoard needs an x value for every point, so a call to :meth:`log_metrics` without a step uses the
    number of earlier step-less calls (0, 1, 2, ...).

    The logger can be pickled (``Fabric(strategy="ddp_spawn")`` does) at any time: the copy keeps the
    original's version and opens its own event file in the same folder when it first writes.

    Args:
        root_dir: Folder that holds all experiments; ``~`` and ``$VAR`` are expanded.
        name: Experiment name: a folder under ``root_dir``. ``None`` or ``""`` for none: runs go to
            ``root_dir/version_<N>``.
        version: ``None`` for the next free ``version_<N>`` folder, an int ``N`` for ``version_<N>``, or a
            str used as the folder name.
        default_hp_metric: When :meth:`log_hyperparams` is given no metrics, record a placeholder
            ``hp_metric = -1``, so TensorBoard's HParams tab has a metric column for the run (as Lightning
            does); a later ``log_metrics({"hp_metric": ...})`` fills it in.
        prefix: Prepended to every metric name with a ``/``, which TensorBoard shows as a section:
            ``prefix="train"`` logs ``loss`` as ``train/loss``. ``""`` for none.
        sub_dir: A relative folder under the version folder to write into (e.g. ``"train"``), so several
            writers of one run keep separate event files; ``~`` and ``$VAR`` are expanded.
        log_graph: Let the Trainer draw the model's graph with :meth:`log_graph` when a fit starts, from
            the model's ``example_input_array``. A direct call of :meth:`log_graph` draws it either way.
        **summary_writer_kwargs: Passed to ``torch.utils.tensorboard.SummaryWriter``: ``comment``,
            ``purge_step``, ``max_queue``, ``flush_secs``, ``filename_suffix``.

    Raises:
        TypeError: An argument has the wrong type, or a keyword is not a SummaryWriter argument.
        ValueError: ``name`` is empty or ``version`` is not a valid folder.
        ModuleNotFoundError: On first write, when ``tensorboard`` is not installed; the message gives the
            ``pip install`` command.

    Example:
        >>> import tempfile
        >>> logger = TensorBoardLogger(tempfile.mkdtemp(), prefix="train")
        >>> logger.log_metrics({"loss": 0.5}, step=0)
        >>> logger.finalize("success")
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        name: str | None = "treadle_logs",
        version: int | str | None = None,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike[str] | None = None,
        log_graph: bool = False,
        **summary_writer_kwargs: Any,
    ) -> None:
        super().__init__(root_dir, name, version, prefix, owner="TensorBoardLogger")
        for argument, flag in (("default_hp_metric", default_hp_metric), ("log_graph", log_graph)):
            if not isinstance(flag, bool):
                raise TypeError(f"TensorBoardLogger({argument}={flag!r}) must be True or False.")
        self._default_hp_metric = default_hp_metric
        self._log_graph = log_graph
        self._sub_dir = _check_sub_dir(sub_dir)
        unknown = sorted(set(summary_writer_kwargs) - set(_WRITER_ARGUMENTS))
        if unknown:
            hint = (
                " The logger sets the writer's folder itself: pass root_dir=, name= and version= instead."
                if {"log_dir", "logdir"} & set(unknown)
                else ""
            )
            raise TypeError(
                f"TensorBoardLogger({unknown[0]}=...) is not a SummaryWriter argument this logger accepts. "
                f"Choose from: {', '.join(_WRITER_ARGUMENTS)}.{hint}"
            )
        self._writer_kwargs = dict(summary_writer_kwargs)
        self._writer: SummaryWriter | None = None
        self._implicit_step = 0

    def __getstate__(self) -> dict[str, Any]:
        # Fabric(strategy="ddp_spawn") pickles its loggers, and an open SummaryWriter holds locks and a
        # thread. Fix the version first so that the copy writes into this run's folder, not the next free
        # one; the copy opens a writer of its own there (a separate event file) when it first writes.
        self._folder.resolve()
        state = self.__dict__.copy()
        state["_writer"] = None
        return state

    @property
    def log_dir(self) -> str:
        """The folder the event files go to: the version folder, or ``sub_dir`` under it."""
        folder = os.fspath(self._folder.path)
        return os.path.join(folder, self._sub_dir) if self._sub_dir else folder

    @property
    def sub_dir(self) -> str | None:
        """The ``sub_dir`` given to the constructor (expanded), or None."""
        return self._sub_dir

    @property
    def log_graph_at_fit_start(self) -> bool:
        """``log_graph=True`` was given: the Trainer draws the model's graph when a fit starts."""
        return self._log_graph

    @property
    def experiment(self) -> SummaryWriter:
        """The underlying ``SummaryWriter``, created (with its folder) on first access.

        Use it for what the logger does not wrap: ``logger.experiment.add_histogram(...)``.

        Raises:
            ModuleNotFoundError: ``tensorboard`` is not installed.
        """
        if self._writer is None:
            require("tensorboard", extra="tensorboard", feature="TensorBoardLogger")
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir, **self._writer_kwargs)
        return self._writer

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Add one scalar per metric at ``step``.

        Args:
            metrics: Metric name to value: Python numbers, or tensors with one element.
            step: The global step, or None (see the class docstring).

        Raises:
            TypeError: ``step`` is not an int, or a value is not a number.
            ValueError: A metric name is empty.
        """
        where = "TensorBoardLogger.log_metrics"
        checked = check_step(step, where)
        values = {tag: float(value) for tag, value in self._prefixed_metrics(metrics, where).items()}
        if not values:
            return
        if checked is None:
            checked = self._implicit_step
            self._implicit_step += 1
        writer = self.experiment
        with self._named_errors():
            for tag, value in values.items():
                writer.add_scalar(tag, value, global_step=checked)

    def log_hyperparams(
        self,
        params: Mapping[str, Any] | argparse.Namespace,
        metrics: Mapping[str, Any] | float | None = None,
        step: int | None = None,
    ) -> None:
        """Record ``params`` for TensorBoard's HParams tab, with the metrics that the tab shows next to them.

        Nested mappings are flattened to ``outer/inner`` names. Numbers, str and bool are kept; one-element
        tensors become numbers; anything else (None, lists, paths, ...) is recorded as its ``str()``.

        Args:
            params: A mapping of names to values, or an ``argparse.Namespace``.
            metrics: The run's results for the HParams tab, e.g. ``{"hp/val_acc": 0.93}``, logged as
                scalars too; a single number means ``{"hp_metric": number}``. None: the placeholder
                ``hp_metric = -1`` when ``default_hp_metric`` is on, else no metric.
            step: The step of those metrics (see :meth:`log_metrics`).

        Raises:
            TypeError: ``params`` is neither a Mapping nor a Namespace, or a metric is not a number.
        """
        where = "TensorBoardLogger.log_hyperparams"
        flat = _flatten(params_to_dict(params, where))
        if metrics is None:
            results: Mapping[str, Any] = {"hp_metric": -1} if self._default_hp_metric else {}
        elif isinstance(metrics, Mapping):
            results = metrics
        else:
            results = {"hp_metric": metrics}
        writer = self.experiment  # first, so that a missing tensorboard gets require()'s message
        from torch.utils.tensorboard.summary import hparams

        if results:
            self.log_metrics(results, step)
        # Under the names log_metrics gave them, so that the tab finds their values.
        names = {join_prefix(self.prefix, str(key)): 0.0 for key in results}
        experiment, session_start, _session_end = hparams(flat, names)  # type: ignore[no-untyped-call]
        # SummaryWriter.add_hparams would open a second writer in a timestamped sub-folder, and its
        # session-end record always says "success" even for a run that later fails; write only the two
        # records that describe the run, into this run's own event file.
        file_writer = writer._get_file_writer()  # type: ignore[no-untyped-call]
        with self._named_errors():
            file_writer.add_summary(experiment)
            file_writer.add_summary(session_start)

    def log_graph(self, model: nn.Module, input_array: Any = None) -> None:
        """Draw ``model``'s computation graph in TensorBoard's Graphs tab, by tracing one forward call.

        Args:
            model: The model, set up by Fabric or not.
            input_array: The forward's input: a tensor, or a tuple of the positional arguments. Default: the
                model's ``example_input_array`` attribute.

        Warns:
            UserWarning: There is no input to trace with, or it is neither a tensor nor a tuple; nothing is
                drawn (a missing graph must not stop training).
        """
        import torch

        from treadle.wrappers import unwrap

        module = unwrap(model)
        if input_array is None:
            input_array = getattr(module, "example_input_array", None)
        if input_array is None:
            warnings.warn(
                "TensorBoardLogger.log_graph: no graph drawn, the model has no example_input_array and no "
                "input_array was given. Pass one: logger.log_graph(model, torch.zeros(1, 64)).",
                UserWarning,
                stacklevel=2,
            )
            return
        if not isinstance(input_array, (torch.Tensor, tuple)):
            warnings.warn(
                f"TensorBoardLogger.log_graph: no graph drawn, input_array is a "
                f"{type(input_array).__name__}; pass a tensor, or a tuple of the forward's positional "
                f"arguments.",
                UserWarning,
                stacklevel=2,
            )
            return
        device = next((p.device for p in module.parameters()), None)
        if device is not None:
            from treadle.tree import move_to_device

            input_array = move_to_device(input_array, device)
        self.experiment.add_graph(module, input_array)

    def save(self) -> None:
        """Flush pending events to disk.

        Raises:
            OSError: The event file could not be written (a full disk); the message names the folder.
        """
        if self._writer is not None:
            with self._named_errors():
                self._writer.flush()

    def finalize(self, status: str) -> None:
        """Flush and close the event file; calling it again is harmless, and logging after it reopens.

        Raises:
            OSError: The event file could not be written (a full disk); the message names the folder. The
                writer is closed all the same.
        """
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with self._named_errors():
                try:
                    writer.flush()
                finally:
                    writer.close()

    @contextlib.contextmanager
    def _named_errors(self) -> Iterator[None]:
        # SummaryWriter writes from a background thread, and re-raises that thread's error (a full disk)
        # at the next write or flush, naming nothing. Each event is a checksummed record: TensorBoard skips
        # a torn last one when it reads the file, so the events before it stay readable.
        try:
            yield
        except OSError as error:
            # The writer's thread is dead; the next write opens a new event file in the same folder.
            broken, self._writer = self._writer, None
            if broken is not None:
                with contextlib.suppress(Exception):
                    broken.close()
            reason = (
                "no space left on device" if error.errno == errno.ENOSPC else error.strerror or str(error)
            )
            raise type(error)(
                error.errno,
                f"TensorBoardLogger could not write its event file in {self.log_dir}: {reason}. Events "
                f"written before stay readable; free the problem (e.g. disk space) and log again.",
            ) from error


def _check_sub_dir(sub_dir: object) -> str | None:
    if sub_dir is None:
        return None
    if not isinstance(sub_dir, (str, os.PathLike)):
        raise TypeError(
            f"TensorBoardLogger(sub_dir={sub_dir!r}) must be a str, os.PathLike or None, got "
            f"{type(sub_dir).__name__}. Pass a folder name such as 'train'."
        )
    text = os.path.expandvars(os.path.expanduser(os.fspath(sub_dir)))
    parts = text.replace("\\", "/").split("/")
    if not text or os.path.isabs(text) or ".." in parts:
        raise ValueError(
            f"TensorBoardLogger(sub_dir={os.fspath(sub_dir)!r}) must be a relative folder inside the run's "
            f"version folder (not absolute, no '..'). Pass a name such as 'train'."
        )
    return text


def _flatten(params: Mapping[str, Any], parent: str = "") -> dict[str, bool | int | float | str]:
    # Here rather than at the top: the loggers package keeps torch out of its module-level imports (base.py
    # duck-types tensors for the same reason), so only the code that can meet a tensor depends on it. It
    # costs nothing: `import treadle` has loaded torch already.
    import torch

    flat: dict[str, bool | int | float | str] = {}
    for key, value in params.items():
        name = f"{parent}/{key}" if parent else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            flat[name] = value.item()
        else:
            flat[name] = str(value)
    return flat
