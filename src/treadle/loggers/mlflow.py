"""MLflowLogger: metrics, hyperparameters and artifacts of a run in an MLflow tracking store.

MLflow is optional (``pip install 'treadle[mlflow]'``): it is imported when the logger first talks to the
store, never on import or construction, so ranks that never log pay nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from treadle.loggers.base import check_prefix, check_step, join_prefix, params_to_dict, to_number
from treadle.optional import require

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["MLflowLogger"]

# What MLflow allows in a metric or parameter name; anything else is replaced, with a warning, rather than
# failing the run at its first log call.
_INVALID_NAME_CHARACTERS = re.compile(r"[^\w./\- :]")
# MLflow's limits: 100 parameters and 1000 metrics per batch call, 6000 characters per parameter value.
_PARAMS_PER_BATCH: Final = 100
_METRICS_PER_BATCH: Final = 1000
_PARAM_VALUE_LENGTH: Final = 6000
_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class MLflowLogger:
    """Log to an MLflow tracking store: a local SQLite database by default, or any tracking server.

    The run is created on first use (the first log call, :attr:`experiment`, :attr:`run_id` or
    :attr:`version`), in the experiment ``experiment_name`` (created if missing). Fabric calls loggers on
    global rank 0 only, so the other ranks create nothing. :meth:`finalize` ends the run with MLflow's
    status for the outcome: ``FINISHED``, ``FAILED`` or ``KILLED`` (interrupted).

    Where it writes, when ``tracking_uri`` is not given: ``$MLFLOW_TRACKING_URI`` if it is set, else the
    SQLite database ``save_dir/mlflow.db``. A new experiment in a SQLite store keeps its artifacts in an
    ``artifacts`` folder next to the database unless ``artifact_location`` says otherwise (MLflow's own
    default is ``./mlruns`` under whatever the working directory is). View it with
    ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``.

    Args:
        experiment_name: The MLflow experiment; created on first use if the store has none of that name.
        run_name: A display name for the run.
        tracking_uri: The store: ``"sqlite:///path/mlflow.db"``, ``"http://host:5000"``, ``"databricks"``, ...
        tags: Tags of the run, e.g. ``{"team": "vision"}``.
        save_dir: The folder of the default SQLite store (``~`` and ``$VAR`` are expanded).
        prefix: Prepended to every metric name with a ``/``.
        artifact_location: Where a new experiment stores artifacts.
        run_id: Continue this existing run (a resumed job) instead of creating one.
        synchronous: Passed to MLflow's batch logging; False logs in the background, and :meth:`save`
            and :meth:`finalize` wait for it. None: MLflow's default.

    Raises:
        TypeError: An argument has the wrong type.
        ModuleNotFoundError: On first use, when ``mlflow`` (or, for a SQLite store, ``sqlalchemy``) is not
            installed; the message gives the ``pip install`` command.

    Example:
        >>> import tempfile
        >>> logger = MLflowLogger(save_dir=tempfile.mkdtemp())  # doctest: +SKIP
        >>> logger.log_hyperparams({"lr": 0.1})  # doctest: +SKIP
        >>> logger.log_metrics({"loss": 0.5}, step=0)  # doctest: +SKIP
        >>> logger.finalize("success")  # doctest: +SKIP
    """

    def __init__(
        self,
        experiment_name: str = "treadle_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        save_dir: str | os.PathLike[str] = "./mlruns",
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        if not isinstance(experiment_name, str):
            raise TypeError(
                f"MLflowLogger(experiment_name={experiment_name!r}) must be a str, got "
                f"{type(experiment_name).__name__}, e.g. experiment_name='treadle_logs'."
            )
        if not experiment_name.strip():
            raise ValueError(
                f"MLflowLogger(experiment_name={experiment_name!r}) must name the experiment, e.g. "
                f"experiment_name='treadle_logs'."
            )
        for argument, value in (
            ("run_name", run_name),
            ("tracking_uri", tracking_uri),
            ("artifact_location", artifact_location),
            ("run_id", run_id),
        ):
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"MLflowLogger({argument}={value!r}) must be a str or None, got {type(value).__name__}."
                )
        if tags is not None and not isinstance(tags, Mapping):
            raise TypeError(f"MLflowLogger(tags={tags!r}) must be a mapping of names to values, or None.")
        if not isinstance(save_dir, (str, os.PathLike)):
            raise TypeError(
                f"MLflowLogger(save_dir={save_dir!r}) must be a str or os.PathLike, got "
                f"{type(save_dir).__name__}."
            )
        if synchronous is not None and not isinstance(synchronous, bool):
            raise TypeError(f"MLflowLogger(synchronous={synchronous!r}) must be True, False or None.")
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._save_dir = os.path.expandvars(os.path.expanduser(os.fspath(save_dir)))
        self._tracking_uri = tracking_uri
        self._tags = {str(key): str(value) for key, value in (tags or {}).items()}
        self._prefix = check_prefix(prefix, "MLflowLogger")
        self._artifact_location = artifact_location
        self._run_id = run_id
        self._experiment_id: str | None = None
        self._batch_options: dict[str, Any] = {} if synchronous is None else {"synchronous": synchronous}
        self._pending: list[Any] = []  # background operations to wait for (synchronous=False)
        self._client: MlflowClient | None = None
        self._implicit_step = 0
        self._renamed: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Fabric(strategy="ddp_spawn") pickles its loggers: create the run first, so that the copy logs into
        # it rather than into a run of its own; the copy opens its own client.
        if self._client is not None or self._run_id is None:
            self.run_id  # noqa: B018
        state = self.__dict__.copy()
        state["_client"] = None
        state["_pending"] = []
        return state

    # --- the Logger protocol -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The experiment's name."""
        return self._experiment_name

    @property
    def version(self) -> str | None:
        """The run's id, or None before the run exists (reading it creates nothing; :attr:`run_id` does)."""
        return self._run_id

    @property
    def root_dir(self) -> str | None:
        """The folder of the default SQLite store, or None for a store given by URI."""
        return None if self._explicit_uri() else self._save_dir

    @property
    def log_dir(self) -> str | None:
        """None: MLflow keeps a run in its store, not in a folder of its own."""
        return None

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def tracking_uri(self) -> str:
        """The store this logger writes to."""
        return self._explicit_uri() or f"sqlite:///{os.path.abspath(self._save_dir)}/mlflow.db"

    @property
    def experiment(self) -> MlflowClient:
        """The ``mlflow.tracking.MlflowClient`` of the store, for what the logger does not wrap, e.g.
        ``logger.experiment.set_tag(logger.run_id, "stage", "2")``.

        Raises:
            ModuleNotFoundError: ``mlflow`` (or ``sqlalchemy`` for a SQLite store) is not installed.
        """
        if self._client is None:
            require("mlflow", extra="mlflow", feature="MLflowLogger")
            uri = self.tracking_uri
            if uri.startswith("sqlite:"):
                require("sqlalchemy", extra="mlflow", feature="MLflowLogger with a SQLite store")
                if not self._explicit_uri():
                    os.makedirs(self._save_dir, exist_ok=True)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        """The MLflow id of the experiment (created if the store has none named ``experiment_name``)."""
        if self._experiment_id is None:
            client = self.experiment
            if self._run_id is not None:
                self._experiment_id = client.get_run(self._run_id).info.experiment_id
            else:
                found = client.get_experiment_by_name(self._experiment_name)
                if found is not None:
                    self._experiment_id = found.experiment_id
                else:
                    self._experiment_id = client.create_experiment(
                        self._experiment_name, artifact_location=self._default_artifact_location()
                    )
        return self._experiment_id

    @property
    def run_id(self) -> str:
        """The MLflow id of the run (created on first access)."""
        if self._run_id is None:
            run = self.experiment.create_run(
                experiment_id=self.experiment_id, tags=self._tags, run_name=self._run_name
            )
            self._run_id = run.info.run_id
        return self._run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record one value per metric at ``step``.

        Args:
            metrics: Metric name to value: Python numbers, or tensors with one element. Characters MLflow
                does not allow in a name are replaced by ``_`` (with a warning, once per name).
            step: The global step, or None for this logger's count of step-less calls (0, 1, 2, ...).

        Raises:
            TypeError: ``step`` is not an int, or a value is not a number.
        """
        where = "MLflowLogger.log_metrics"
        checked = check_step(step, where)
        values: dict[str, float] = {}
        for key, value in metrics.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"{where} got metric name {key!r}; names must be non-empty str.")
            values[self._valid_name(join_prefix(self._prefix, key))] = float(to_number(key, value, where))
        if not values:
            return
        if checked is None:
            checked = self._implicit_step
            self._implicit_step += 1
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key=key, value=value, timestamp=now, step=checked) for key, value in values.items()]
        for start in range(0, len(batch), _METRICS_PER_BATCH):
            self._log_batch(metrics=batch[start : start + _METRICS_PER_BATCH])

    def log_hyperparams(self, params: Mapping[str, Any] | argparse.Namespace) -> None:
        """Record ``params`` as the run's parameters.

        Nested mappings are flattened to ``outer/inner`` names; values are stored as text (MLflow keeps
        parameters as strings), cut to MLflow's 6000 characters. MLflow refuses to change a parameter a
        run already has, so log each name once (a resumed run may log the same value again).

        Args:
            params: A mapping of names to values, or an ``argparse.Namespace``.

        Raises:
            TypeError: ``params`` is neither a Mapping nor a Namespace.
        """
        from mlflow.entities import Param

        flat = _flatten(params_to_dict(params, "MLflowLogger.log_hyperparams"))
        batch = [Param(self._valid_name(key), _param_text(value)) for key, value in flat.items()]
        for start in range(0, len(batch), _PARAMS_PER_BATCH):
            self._log_batch(params=batch[start : start + _PARAMS_PER_BATCH])

    def log_artifact(self, local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Store a file (or a folder's files) with the run, e.g. the ``curves.png`` of ``treadle plot``.

        Args:
            local_path: The file or folder to upload.
            artifact_path: A folder inside the run's artifacts to put it in; None for the top.

        Raises:
            FileNotFoundError: ``local_path`` does not exist.
        """
        path = Path(local_path)
        if not path.exists():
            raise FileNotFoundError(
                f"MLflowLogger.log_artifact(local_path={os.fspath(local_path)!r}): there is no such file or "
                f"folder. Pass a file that exists, e.g. the curves.png that treadle plot wrote."
            )
        if path.is_dir():
            self.experiment.log_artifacts(self.run_id, os.fspath(path), artifact_path)
        else:
            self.experiment.log_artifact(self.run_id, os.fspath(path), artifact_path)

    def save(self) -> None:
        """Wait for metrics and parameters logged in the background (``synchronous=False``)."""
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()

    def finalize(self, status: str) -> None:
        """End the run: ``"success"`` -> ``FINISHED``, ``"failed"`` -> ``FAILED``, ``"interrupted"`` ->
        ``KILLED``. Nothing happens for a logger that never created a run; calling it again is harmless."""
        if self._client is None or self._run_id is None:
            return
        self.save()
        self._client.set_terminated(self._run_id, _STATUS.get(status, "FINISHED"))

    # --- internals ---------------------------------------------------------------------------------------
    def _log_batch(self, **entries: Any) -> None:
        operation = self.experiment.log_batch(self.run_id, **entries, **self._batch_options)
        if operation is not None and callable(getattr(operation, "wait", None)):
            self._pending.append(operation)

    def _explicit_uri(self) -> str | None:
        # MLflow reads its own environment variable; the logger only needs to know whether one is set.
        return self._tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None

    def _default_artifact_location(self) -> str | None:
        if self._artifact_location is not None:
            return self._artifact_location
        uri = self.tracking_uri
        if not uri.startswith("sqlite:///"):
            return None
        database = uri[len("sqlite:///") :]
        if database in ("", ":memory:"):
            return None
        return Path(os.path.abspath(database)).parent.joinpath("artifacts").as_uri()

    def _valid_name(self, name: str) -> str:
        valid = _INVALID_NAME_CHARACTERS.sub("_", name)
        if valid != name and name not in self._renamed:
            self._renamed.add(name)
            warnings.warn(
                f"MLflowLogger: MLflow allows only letters, digits and _ - . / : and space in names; "
                f"{name!r} is logged as {valid!r}.",
                RuntimeWarning,
                stacklevel=3,
            )
        return valid


def _flatten(params: Mapping[str, Any], parent: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{parent}/{key}" if parent else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    if hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:
        value = value.item()
    text = str(value)
    return text if len(text) <= _PARAM_VALUE_LENGTH else text[: _PARAM_VALUE_LENGTH - 3] + "..."
