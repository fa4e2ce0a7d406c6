"""WandbLogger: metrics, hyperparameters and artifacts of a run in Weights & Biases (online or offline).

wandb is optional (``pip install 'treadle[wandb]'``): it is imported when the logger first writes, never
on import or construction, so ranks that never log start no run and pay nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from treadle.loggers.base import check_prefix, check_step, join_prefix, params_to_dict, to_number
from treadle.optional import require

__all__ = ["WandbLogger"]

STEP_KEY: Final = "trainer/global_step"
"""The key that carries the step in every logged row; the run's charts use it as their x axis."""


class WandbLogger:
    """Log to Weights & Biases: one W&B run per logger, started on the first write.

    Each :meth:`log_metrics` row also holds :data:`STEP_KEY` (``trainer/global_step``), which the run's
    charts use as their x axis. W&B's own step must only grow, so a resumed job that logs a step again
    would lose rows; the step key has no such rule, as in Lightning.

    ``offline=True`` writes the run under ``save_dir/wandb/offline-run-*`` with no network and no account;
    ``wandb sync <that folder>`` uploads it later. A run started outside the logger (``wandb.init`` in your
    script) is used as it is, and :meth:`finalize` leaves it running for you to finish.

    Args:
        name: The run's display name.
        save_dir: The folder W&B writes its ``wandb`` folder into (``~`` and ``$VAR`` are expanded).
        version: The run's id: give the id of an earlier run to continue it (``resume="allow"``).
        offline: Write the run locally only.
        dir: Same as ``save_dir`` (W&B's name); it wins when both are given.
        id: Same as ``version``.
        anonymous: Log without an account (W&B's anonymous mode).
        project: The W&B project; default ``"treadle_logs"``.
        prefix: Prepended to every metric name with a ``/``.
        experiment: A run to log into instead of starting one.
        **init_kwargs: More arguments for ``wandb.init`` (``entity``, ``tags``, ``group``, ``config``, ...).

    Raises:
        TypeError: An argument has the wrong type.
        ModuleNotFoundError: On first write, when ``wandb`` is not installed; the message gives the
            ``pip install`` command.

    Example:
        >>> logger = WandbLogger(project="digits", offline=True)  # doctest: +SKIP
        >>> logger.log_hyperparams({"lr": 0.1})  # doctest: +SKIP
        >>> logger.log_metrics({"loss": 0.5}, step=0)  # doctest: +SKIP
        >>> logger.finalize("success")  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike[str] = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike[str] | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        prefix: str = "",
        experiment: Any = None,
        **init_kwargs: Any,
    ) -> None:
        for argument, value in (("name", name), ("version", version), ("id", id), ("project", project)):
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"WandbLogger({argument}={value!r}) must be a str or None, got {type(value).__name__}."
                )
        for argument, folder_given in (("save_dir", save_dir), ("dir", dir)):
            if folder_given is not None and not isinstance(folder_given, (str, os.PathLike)):
                raise TypeError(
                    f"WandbLogger({argument}={folder_given!r}) must be a str or os.PathLike, got "
                    f"{type(folder_given).__name__}."
                )
        if not isinstance(offline, bool):
            raise TypeError(f"WandbLogger(offline={offline!r}) must be True or False.")
        if anonymous is not None and not isinstance(anonymous, bool):
            raise TypeError(f"WandbLogger(anonymous={anonymous!r}) must be True, False or None.")
        if version is not None and id is not None and version != id:
            raise ValueError(
                f"WandbLogger(version={version!r}, id={id!r}) names two runs. Pass one of them: they are "
                f"the same argument under two names."
            )
        folder = dir if dir is not None else save_dir
        self._save_dir = os.path.expandvars(os.path.expanduser(os.fspath(folder)))
        self._name = name
        self._id = version if version is not None else id
        self._offline = offline
        self._anonymous = anonymous
        self._project = project if project is not None else "treadle_logs"
        self._prefix = check_prefix(prefix, "WandbLogger")
        self._init_kwargs = dict(init_kwargs)
        self._run: Any = experiment
        self._owns_run = False
        self._implicit_step = 0

    def __getstate__(self) -> dict[str, Any]:
        # Fabric(strategy="ddp_spawn") pickles its loggers, and a run holds a connection to W&B's service.
        # The copy keeps the run's id and continues that run when it first writes.
        state = self.__dict__.copy()
        if self._run is not None:
            state["_id"] = self._run.id
        state["_run"] = None
        state["_owns_run"] = False
        return state

    # --- the Logger protocol -----------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        """The run's display name (W&B makes one up when none was given, once the run starts)."""
        return self._run.name if self._run is not None else self._name

    @property
    def version(self) -> str | None:
        """The run's id, or None before the run starts (reading it starts nothing)."""
        return self._run.id if self._run is not None else self._id

    @property
    def root_dir(self) -> str:
        """The folder W&B writes its ``wandb`` folder into."""
        return self._save_dir

    @property
    def log_dir(self) -> str | None:
        """The run's local files folder, once the run has started; None before."""
        return str(self._run.dir) if self._run is not None else None

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def experiment(self) -> Any:
        """The ``wandb`` run, started on first access (``wandb.init``), for what the logger does not wrap,
        e.g. ``logger.experiment.log({"samples": wandb.Image(...)})``.

        Raises:
            ModuleNotFoundError: ``wandb`` is not installed.
        """
        if self._run is None:
            wandb = require("wandb", extra="wandb", feature="WandbLogger")
            if wandb.run is not None and self._id in (None, wandb.run.id):
                self._run = wandb.run  # started by the script: log into it, leave finishing it to the script
            else:
                os.makedirs(self._save_dir, exist_ok=True)
                options: dict[str, Any] = {
                    "name": self._name,
                    "project": self._project,
                    "dir": self._save_dir,
                    "id": self._id,
                    "resume": "allow" if self._id is not None else None,
                    "mode": "offline" if self._offline else None,
                    "anonymous": "allow" if self._anonymous else None,
                }
                options.update(self._init_kwargs)
                self._run = wandb.init(**{key: value for key, value in options.items() if value is not None})
                self._owns_run = True
            self._run.define_metric(STEP_KEY)
            self._run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        return self._run

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log one row of scalars, with the step under :data:`STEP_KEY`.

        Args:
            metrics: Metric name to value: Python numbers, or tensors with one element.
            step: The global step, or None for this logger's count of step-less calls (0, 1, 2, ...).

        Raises:
            TypeError: ``step`` is not an int, or a value is not a number.
        """
        where = "WandbLogger.log_metrics"
        checked = check_step(step, where)
        row: dict[str, int | float] = {}
        for key, value in metrics.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"{where} got metric name {key!r}; names must be non-empty str.")
            row[join_prefix(self._prefix, key)] = to_number(key, value, where)
        if not row:
            return
        if checked is None:
            checked = self._implicit_step
            self._implicit_step += 1
        row[STEP_KEY] = checked
        self.experiment.log(row)

    def log_hyperparams(self, params: Mapping[str, Any] | argparse.Namespace) -> None:
        """Merge ``params`` into the run's config (nested mappings stay nested; later values win).

        Args:
            params: A mapping of names to values, or an ``argparse.Namespace``.

        Raises:
            TypeError: ``params`` is neither a Mapping nor a Namespace.
        """
        config = _config_values(params_to_dict(params, "WandbLogger.log_hyperparams"))
        self.experiment.config.update(config, allow_val_change=True)

    def log_artifact(
        self, local_path: str | os.PathLike[str], name: str | None = None, artifact_type: str = "file"
    ) -> None:
        """Store a file or folder with the run as a W&B artifact, e.g. the ``curves.png`` of ``treadle plot``.

        Args:
            local_path: The file or folder.
            name: The artifact's name; default: the file's name (W&B allows letters, digits, ``-_.``).
            artifact_type: The artifact's type, e.g. ``"file"``, ``"model"``, ``"dataset"``.

        Raises:
            FileNotFoundError: ``local_path`` does not exist.
        """
        path = Path(local_path)
        if not path.exists():
            raise FileNotFoundError(
                f"WandbLogger.log_artifact(local_path={os.fspath(local_path)!r}): there is no such file or "
                f"folder. Pass a file that exists, e.g. the curves.png that treadle plot wrote."
            )
        import wandb

        artifact = wandb.Artifact(name or path.name, type=artifact_type)
        if path.is_dir():
            artifact.add_dir(os.fspath(path))
        else:
            artifact.add_file(os.fspath(path))
        self.experiment.log_artifact(artifact)

    def watch(self, model: Any, log: str | None = "gradients", log_freq: int = 100) -> None:
        """Let W&B record ``model``'s gradients (and/or parameters) every ``log_freq`` steps
        (``wandb.Run.watch``); a model set up by Fabric is unwrapped first."""
        from treadle.wrappers import unwrap

        self.experiment.watch(unwrap(model), log=log, log_freq=log_freq)

    def save(self) -> None:
        """Nothing to do: W&B writes in the background and flushes when the run finishes."""

    def finalize(self, status: str) -> None:
        """Finish the run this logger started (exit code 0 for ``"success"``, 1 otherwise, which W&B shows
        as failed); a run started by the script is left running. Calling it again is harmless."""
        if self._run is None or not self._owns_run:
            return
        run, self._run, self._owns_run = self._run, None, False
        self._id = run.id  # logging after finalize continues this run
        run.finish(exit_code=0 if status == "success" else 1)


def _config_values(params: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key): _config_value(value) for key, value in params.items()}


def _config_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _config_values(value)
    if isinstance(value, argparse.Namespace):
        return _config_values(vars(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _config_values({field.name: getattr(value, field.name) for field in dataclasses.fields(value)})
    if isinstance(value, (list, tuple)):
        return [_config_value(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:
        return value.item()
    return str(value)  # a path, a dtype, a class: W&B's config holds JSON
