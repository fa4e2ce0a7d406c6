"""MLflowLogger against a real local tracking store: a SQLite database and an artifacts folder."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from treadle.loggers import Logger, MLFlowLogger, MLflowLogger

pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")
from mlflow.tracking import MlflowClient


@pytest.fixture(autouse=True)
def no_tracking_uri_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_metrics_params_and_artifacts_land_in_the_sqlite_store(tmp_path: Path) -> None:
    logger = MLflowLogger(
        experiment_name="digits", run_name="first", save_dir=tmp_path / "mlruns", tags={"team": "vision"}
    )
    assert isinstance(logger, Logger) and MLFlowLogger is MLflowLogger
    assert not (tmp_path / "mlruns").exists()  # nothing until the first log call
    logger.log_hyperparams(
        {"lr": 0.1, "optimizer": {"name": "adamw", "eps": torch.tensor(1e-8, dtype=torch.float64)}}
    )
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1), "acc": torch.tensor(0.5)}, step=step * 10)
    curves = tmp_path / "curves.png"
    curves.write_bytes(b"\x89PNG\r\n\x1a\n")
    logger.log_artifact(curves)
    logger.finalize("success")

    # Read back with MLflow's own client, from the database file.
    assert logger.tracking_uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=logger.tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.info.run_name == "first" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "digits" == logger.name
    assert run.data.params == {"lr": "0.1", "optimizer/name": "adamw", "optimizer/eps": "1e-08"}
    assert run.data.tags["team"] == "vision"
    assert history(client, logger.run_id, "loss") == [(0, 1.0), (10, 0.5), (20, pytest.approx(1 / 3))]
    assert history(client, logger.run_id, "acc") == [(0, 0.5), (10, 0.5), (20, 0.5)]
    assert [a.path for a in client.list_artifacts(logger.run_id)] == ["curves.png"]
    stored = Path(client.download_artifacts(logger.run_id, "curves.png", os.fspath(tmp_path / "back")))
    assert stored.read_bytes() == curves.read_bytes()
    assert (tmp_path / "mlruns" / "artifacts").is_dir()  # next to the database, not in the cwd
    assert logger.version == logger.run_id and logger.log_dir is None


def test_step_counting_prefix_names_and_statuses(tmp_path: Path) -> None:
    logger = MLflowLogger(save_dir=tmp_path, prefix="train")
    logger.log_metrics({"loss": 3.0})
    logger.log_metrics({"loss": 2.0})
    with pytest.warns(RuntimeWarning, match=r"'train/top@1' is logged as 'train/top_1'"):
        logger.log_metrics({"top@1": 0.5}, step=7)
    logger.finalize("interrupted")
    client = logger.experiment
    assert history(client, logger.run_id, "train/loss") == [(0, 3.0), (1, 2.0)]
    assert history(client, logger.run_id, "train/top_1") == [(7, 0.5)]
    assert client.get_run(logger.run_id).info.status == "KILLED"
    logger.finalize("interrupted")  # again: harmless

    failed = MLflowLogger(save_dir=tmp_path)
    failed.log_metrics({"loss": 1.0}, step=0)
    failed.finalize("failed")
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert failed.experiment_id == logger.experiment_id  # the same experiment, a new run


def test_run_id_continues_a_run_and_a_pickled_copy_logs_into_the_same_run(tmp_path: Path) -> None:
    first = MLflowLogger(save_dir=tmp_path)
    first.log_metrics({"loss": 1.0}, step=0)
    first.finalize("interrupted")
    resumed = MLflowLogger(save_dir=tmp_path, run_id=first.run_id)
    resumed.log_metrics({"loss": 0.5}, step=1)
    copy = pickle.loads(pickle.dumps(resumed))  # Fabric(strategy="ddp_spawn") pickles its loggers
    copy.log_metrics({"loss": 0.25}, step=2)
    copy.finalize("success")
    assert copy.run_id == first.run_id
    assert history(resumed.experiment, first.run_id, "loss") == [(0, 1.0), (1, 0.5), (2, 0.25)]

    fresh = MLflowLogger(save_dir=tmp_path / "other")
    clone = pickle.loads(pickle.dumps(fresh))  # not used yet: the run is made first, and shared
    assert clone.run_id == fresh.run_id


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"MLflowLogger\(experiment_name=''\) must name the experiment"):
        MLflowLogger(experiment_name="")
    with pytest.raises(TypeError, match=r"MLflowLogger\(run_id=3\) must be a str or None, got int"):
        MLflowLogger(run_id=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"MLflowLogger\(prefix=None\) must be a str"):
        MLflowLogger(prefix=None)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match=r"log_artifact\(local_path='nope.png'\): there is no such"):
        MLflowLogger().log_artifact("nope.png")


def test_missing_mlflow_gives_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    logger = MLflowLogger(save_dir=tmp_path)  # constructing still works
    with pytest.raises(
        ModuleNotFoundError, match=r"MLflowLogger needs `mlflow`.*pip install 'treadle\[mlflow\]'"
    ):
        logger.log_metrics({"loss": 1.0}, step=0)
    assert list(tmp_path.iterdir()) == []


def test_importing_and_constructing_does_not_import_mlflow(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from treadle.loggers import MLflowLogger
        logger = MLflowLogger(save_dir={os.fspath(tmp_path)!r})
        logger.save()
        logger.finalize("success")
        assert not [m for m in sys.modules if m.startswith("mlflow")]
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
