"""What every treadle logger shares: the :class:`Logger` protocol, the run-folder convention
(``root_dir/name/version_N``), metric-name prefixes, and atomic file replacement."""

from __future__ import annotations

import argparse
import operator
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, SupportsIndex, runtime_checkable

# Re-exported: the CSV logger and the profiler callback import it from here.

__all__ = ["FolderLogger", "Logger", "RunFolder", "next_version", "version_folders"]

PREFIX_SEPARATOR = "/"
"""Joins a logger's ``prefix`` to each metric name. ``/`` because TensorBoard groups tags into sections at
``/``, so ``prefix="train"`` gives a "train" section; the CSV column reads ``train/loss``."""

_VERSION_FOLDER = re.compile(r"version_(\d+)")
_UNSET_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@runtime_checkable
class Logger(Protocol):
    """The interface Fabric, the Trainer and the checkpoint callback call on a logger.

    Any object with these members is a logger; there is nothing to inherit. Fabric calls loggers only on
    the process with global rank 0, so a logger does not need to know about ranks.

    Members:
        name: The experiment name (a folder level for file-based loggers), or None.
        version: The run's version (an int for ``version_N`` folders, or a str), or None.
        root_dir: The folder that holds all experiments, or None for loggers that write no files.
        log_dir: The folder this run writes into, or None.
        log_metrics(metrics, step): Record scalar values. Fabric passes plain Python numbers.
        log_hyperparams(params): Record the run's configuration.
        save(): Write anything buffered to durable storage.
        finalize(status): The run ended with ``"success"``, ``"failed"`` or ``"interrupted"``. Flush and
            release resources. Calling it twice must be harmless.

    Example:
        >>> class PrintLogger:
        ...     name = version = root_dir = log_dir = None
        ...     def log_metrics(self, metrics, step=None):
        ...         print(step, dict(metrics))
        ...     def log_hyperparams(self, params):
        ...         pass
        ...     def save(self):
        ...         pass
        ...     def finalize(self, status):
        ...         pass
        >>> isinstance(PrintLogger(), Logger)
        True
    """

    @property
    def name(self) -> str | None: ...

    @property
    def version(self) -> int | str | None: ...

    @property
    def root_dir(self) -> str | None: ...

    @property
    def log_dir(self) -> str | None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_hyperparams(self, params: Mapping[str, Any] | argparse.Namespace) -> None: ...

    def save(self) -> None: ...

    def finalize(self, status: str) -> None: ...


def version_folders(experiment_dir: str | os.PathLike[str]) -> dict[int, Path]:
    """The ``version_<N>`` folders in ``experiment_dir``, by ``N``.

    Files and folders with other names are ignored; a missing ``experiment_dir`` counts as empty.

    Example:
        >>> version_folders("/no/such/folder")
        {}
    """
    try:
        entries = list(os.scandir(experiment_dir))
    except FileNotFoundError:
        return {}
    return {
        int(match.group(1)): Path(entry.path)
        for entry in entries
        if (match := _VERSION_FOLDER.fullmatch(entry.name)) is not None and entry.is_dir()
    }


def next_version(experiment_dir: str | os.PathLike[str]) -> int:
    """One above the highest ``version_<N>`` folder in ``experiment_dir``, or 0 when there is none.

    Folders with other names are ignored; a missing ``experiment_dir`` counts as empty.

    Example:
        >>> next_version("/no/such/folder")
        0
    """
    return max(version_folders(experiment_dir), default=-1) + 1


class RunFolder:
    """``root_dir/name/<version>``: the folder one run of one logger writes into.

    ``root_dir`` and ``name`` are read as a shell would: ``~`` is the home folder and ``$VAR`` (or
    ``${VAR}``) an environment variable, expanded when the folder is made. ``name=None`` or ``""`` leaves
    the experiment level out: runs go to ``root_dir/version_<N>``.

    ``version=None`` means "the next free integer" (see :func:`next_version`). It is resolved on first
    access of :attr:`version` or :attr:`path`, not in the constructor, and resolving only lists the
    experiment folder: nothing is created until the logger first writes. Loggers built on every rank
    therefore leave no trace on ranks that never log.

    Each logger resolves its own version. To put, say, a CSV and a TensorBoard log in the same folder,
    give the second logger the first one's version: ``CSVLogger("logs", version=tb.version)``. Two runs
    started at the same moment in the same ``root_dir`` may pick the same free version; give concurrent
    runs (sweeps) explicit versions.

    Args:
        root_dir: Folder holding all experiments.
        name: Experiment name, a folder under ``root_dir``; ``None`` or ``""`` for none.
        version: ``None`` for the next free ``version_<N>``; an int ``N`` for ``version_<N>``; a str is
            used as the folder name as is.
        owner: The class name used in error messages, e.g. ``"CSVLogger"``.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``name`` is blank (spaces only), ``root_dir`` or ``name`` names an environment variable
            that is not set, ``version`` is negative, or a str ``version`` is not a plain folder name.

    Example:
        >>> RunFolder("logs", "exp", 3, owner="CSVLogger").path.as_posix()
        'logs/exp/version_3'
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        name: str | None,
        version: int | str | None,
        *,
        owner: str,
    ) -> None:
        if not isinstance(root_dir, (str, os.PathLike)):
            raise TypeError(
                f"{owner}(root_dir={root_dir!r}) must be a str or os.PathLike, got "
                f"{type(root_dir).__name__}. Pass a folder path such as 'logs'."
            )
        if name is None:
            name = ""
        if not isinstance(name, str):
            raise TypeError(
                f"{owner}(name={name!r}) must be a str or None, got {type(name).__name__}. Pass a name such "
                f"as 'treadle_logs', or None to write to root_dir/version_<N>."
            )
        if name and not name.strip():
            raise ValueError(
                f"{owner}(name={name!r}) is only spaces: it is the experiment's folder under root_dir. Pass "
                f"a name such as 'treadle_logs', or None to write to root_dir/version_<N>."
            )
        if isinstance(version, bool) or not isinstance(version, (int, str, type(None))):
            raise TypeError(
                f"{owner}(version={version!r}) must be None, an int or a str, got {type(version).__name__}. "
                f"Pass None to use the next free version_<N> folder."
            )
        if isinstance(version, int) and version < 0:
            raise ValueError(
                f"{owner}(version={version!r}) must be >= 0. Pass None to use the next free version_<N> "
                f"folder."
            )
        separators = [sep for sep in ("/", os.sep, os.altsep) if sep]
        if isinstance(version, str) and (
            version in ("", ".", "..") or any(sep in version for sep in separators)
        ):
            raise ValueError(
                f"{owner}(version={version!r}) must be a plain folder name (no path separators, not '', "
                f"'.' or '..'). Pass a name such as 'baseline', or None for the next free version_<N>."
            )
        self._root_dir = _expand(os.fspath(root_dir), "root_dir", owner)
        self._name = _expand(name, "name", owner) if name else ""
        self._version = version

    @property
    def root_dir(self) -> str:
        return self._root_dir

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        """The resolved version; the first access of a ``None`` version fixes it."""
        if self._version is None:
            self._version = next_version(Path(self._root_dir, self._name))
        return self._version

    @property
    def path(self) -> Path:
        """The run folder (resolved, not created)."""
        return self.resolve()

    def resolve(self) -> Path:
        """Fix the version now if it is not yet fixed, and return the run folder (not created)."""
        version = self.version
        folder = f"version_{version}" if isinstance(version, int) else version
        return Path(self._root_dir, self._name, folder)


class FolderLogger:
    """The members shared by loggers that write into a :class:`RunFolder`: the folder, the metric-name
    prefix, and the :class:`Logger` properties that read them.

    Subclasses add ``log_metrics``, ``log_hyperparams``, ``save`` and ``finalize``, and use
    :meth:`_prefixed_metrics` to check and name the values they are given.

    Args:
        root_dir: Folder holding all experiments (``~`` and ``$VAR`` are expanded).
        name: Experiment name, a folder under ``root_dir``; ``None`` or ``""`` for none.
        version: See :class:`RunFolder`.
        prefix: Prepended to every metric name with :data:`PREFIX_SEPARATOR`; ``""`` for none.
        owner: The class name used in error messages, e.g. ``"CSVLogger"``.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``name`` or ``version`` is not a valid folder (see :class:`RunFolder`).

    Example:
        >>> logger = FolderLogger("logs", "exp", 3, "train", owner="MyLogger")
        >>> logger.name, logger.version, logger.prefix
        ('exp', 3, 'train')
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        name: str | None,
        version: int | str | None,
        prefix: str,
        *,
        owner: str,
    ) -> None:
        self._folder = RunFolder(root_dir, name, version, owner=owner)
        self._prefix = check_prefix(prefix, owner)

    @property
    def name(self) -> str:
        return self._folder.name

    @property
    def version(self) -> int | str:
        return self._folder.version

    @property
    def root_dir(self) -> str:
        return self._folder.root_dir

    @property
    def log_dir(self) -> str:
        return os.fspath(self._folder.path)

    @property
    def prefix(self) -> str:
        return self._prefix

    def _prefixed_metrics(self, metrics: Mapping[str, object], where: str) -> dict[str, int | float]:
        """``metrics`` as numbers under their prefixed names; ``where`` names the caller in errors."""
        values: dict[str, int | float] = {}
        for key, value in metrics.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"{where} got metric name {key!r}; names must be non-empty str.")
            values[join_prefix(self._prefix, key)] = to_number(key, value, where)
        return values


def _expand(path: str, argument: str, owner: str) -> str:
    expanded = os.path.expandvars(os.path.expanduser(path))
    # os.path.expandvars leaves an unset variable as it is: a folder literally named "$SCRATCH" is never
    # what was meant.
    unset = _UNSET_VARIABLE.search(expanded)
    if unset is not None:
        raise ValueError(
            f"{owner}({argument}={path!r}) names the environment variable {unset.group(0)}, which is not "
            f"set. Set it (export {unset.group(1) or unset.group(2)}=...) or pass the folder itself."
        )
    return expanded


def join_prefix(prefix: str, name: str) -> str:
    """The logged name of metric ``name`` under ``prefix`` (see :data:`PREFIX_SEPARATOR`)."""
    return f"{prefix}{PREFIX_SEPARATOR}{name}" if prefix else name


def check_prefix(prefix: object, owner: str) -> str:
    """Return ``prefix`` if it is a str, else raise a TypeError naming ``owner``."""
    if not isinstance(prefix, str):
        raise TypeError(
            f"{owner}(prefix={prefix!r}) must be a str, got {type(prefix).__name__}. Pass '' for no prefix, "
            f"or e.g. 'train' to log 'loss' as 'train{PREFIX_SEPARATOR}loss'."
        )
    return prefix


def check_step(step: object, where: str) -> int | None:
    """Return ``step`` as an int (or None); accepts anything with ``__index__``, such as numpy ints."""
    if step is None:
        return None
    if isinstance(step, bool):
        raise TypeError(f"{where}(step={step!r}) must be an int or None, got bool.")
    try:
        if isinstance(step, SupportsIndex):
            return operator.index(step)
    except TypeError:  # e.g. a float tensor: it has __index__, which refuses non-integers
        pass
    raise TypeError(
        f"{where}(step={step!r}) must be an int or None, got {type(step).__name__}. "
        f"Pass the global step as an int, e.g. step=int(step)."
    )


def to_number(name: str, value: object, where: str) -> int | float:
    """``value`` as an int (kept exact) or a float; 0-d tensors and numpy scalars go through float(), and a
    bool is 1.0 or 0.0. Text is refused even when it reads as a number: it is almost always a mistake."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        if isinstance(value, (str, bytes, bytearray)):
            raise TypeError
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{where} got metric {name!r} = {value!r} ({type(value).__name__}), which is not a number. "
            f"Log scalars only: a Python number or a tensor with one element."
        ) from None


def params_to_dict(params: Mapping[str, Any] | argparse.Namespace, where: str) -> dict[str, Any]:
    """``params`` as a plain dict; raises a TypeError naming ``where`` for anything else."""
    if isinstance(params, argparse.Namespace):
        return dict(vars(params))
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(
        f"{where}(params={params!r}) must be a Mapping or an argparse.Namespace, got "
        f"{type(params).__name__}. Pass a dict, e.g. {{'lr': 1e-3}}, or dataclasses.asdict(config)."
    )


def parse_loggers(loggers: Any) -> list[Any]:
    """Turn ``Fabric(loggers=...)`` (None, one logger, or a list/tuple of them) into a list, checking each."""
    if loggers is None:
        return []
    parsed = list(loggers) if isinstance(loggers, (list, tuple)) else [loggers]
    for position, logger in enumerate(parsed):
        if not callable(getattr(logger, "log_metrics", None)):
            raise TypeError(
                f"Fabric(loggers=...) item {position} ({type(logger).__name__}) is not a logger: it has no "
                "log_metrics(metrics, step) method. Use treadle.loggers.CSVLogger or TensorBoardLogger."
            )
    return parsed


def metric_value(name: str, value: Any, where: str = "Fabric.log") -> int | float:
    """A logged value as a Python number, converted once for every logger.

    Ints stay exact; one-element tensors and numpy scalars become Python numbers. `where` names the call
    the user made (``"Fabric.log"``, ``"Trainer.log"``) in the error messages.

    Raises:
        ValueError: ``value`` is a tensor with more than one element.
        TypeError: ``value`` is not a number.
    """
    # Duck-typed so that this module does not import torch.
    if hasattr(value, "numel") and hasattr(value, "item"):
        if value.numel() != 1:
            raise ValueError(
                f"{where}({name!r}, ...) got a tensor of shape {tuple(value.shape)}; only single numbers "
                "can be logged. Reduce it first, e.g. value.mean()."
            )
        value = value.item()
    try:
        return to_number(name, value, where)
    except TypeError:
        # Raised here, where the user's call is, rather than by whichever logger happens to come first.
        raise TypeError(
            f"{where}({name!r}, ...) got {value!r} ({type(value).__name__}), which is not a number. "
            "Log an int, a float or a tensor with one element; put text in logger.log_hyperparams(...)."
        ) from None
