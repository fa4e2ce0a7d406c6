"""WandbLogger in offline mode: the run W&B writes to disk is read back record by record."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from treadle.loggers import Logger, WandbLogger
from treadle.loggers.wandb import STEP_KEY

pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2


@pytest.fixture(autouse=True)
def quiet_offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("WANDB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", os.fspath(tmp_path / "wandb_config"))


def records(path: Path) -> Iterator[Any]:
    """The records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB-style
    32 KiB blocks of chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    data = path.read_bytes()
    if len(data) < 7:  # W&B has not written the header yet
        return
    assert data[:4] == b":W&B"
    position, block, parts = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # too little room for a chunk header: the block is padded
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if position + 7 + length > len(data):  # the writer is midway through this chunk
            return
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:
            payload = chunk
        elif kind == 2:
            parts = chunk
            continue
        elif kind == 3:
            parts += chunk
            continue
        elif kind == 4:
            payload = parts + chunk
        else:
            position += left - 7 - length
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def read_run(save_dir: Path, timeout: float = 30.0) -> dict[str, Any]:
    """The finished run in ``save_dir``. W&B's service process writes the file and may still be flushing
    it when ``finish()`` returns, so this reads until the exit record is there (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while True:
        run = _read_run_once(save_dir)
        if run["exit_code"] is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def _read_run_once(save_dir: Path) -> dict[str, Any]:
    (run_file,) = save_dir.glob("wandb/offline-run-*/run-*.wandb")
    run: dict[str, Any] = {"history": [], "config": {}, "exit_code": None, "artifacts": []}
    for record in records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, name=record.run.display_name, project=record.run.project)
        elif kind == "history":
            row = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }
            run["history"].append({k: v for k, v in row.items() if not k.startswith("_")})
        elif kind == "config":
            for item in record.config.update:
                run["config"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "artifact":
            run["artifacts"].append(record.artifact.name)
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def test_metrics_config_and_an_artifact_written_offline(tmp_path: Path) -> None:
    logger = WandbLogger(name="first", save_dir=tmp_path, offline=True, project="digits", prefix="train")
    assert isinstance(logger, Logger)
    assert logger.version is None and logger.log_dir is None and not (tmp_path / "wandb").exists()
    logger.log_hyperparams({"lr": 0.1, "optimizer": {"name": "adamw"}, "dtype": torch.float32})
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1), "acc": torch.tensor(0.5)}, step=step * 10)
    logger.log_metrics({"lr": 0.01})  # no step: the logger counts them, 0, 1, ...
    curves = tmp_path / "curves.png"
    curves.write_bytes(b"\x89PNG\r\n\x1a\n")
    logger.log_artifact(curves, name="curves")
    run_id = logger.version
    assert run_id is not None and logger.log_dir is not None
    logger.finalize("success")
    logger.finalize("success")  # again: harmless

    run = read_run(tmp_path)
    assert (run["id"], run["name"], run["project"]) == (run_id, "first", "digits")
    assert run["config"]["lr"] == 0.1
    assert run["config"]["optimizer"] == {"name": "adamw"}
    assert run["config"]["dtype"] == "torch.float32"
    assert run["history"] == [
        {"train/loss": 1.0, "train/acc": 0.5, STEP_KEY: 0},
        {"train/loss": 0.5, "train/acc": 0.5, STEP_KEY: 10},
        {"train/loss": pytest.approx(1 / 3), "train/acc": 0.5, STEP_KEY: 20},
        {"train/lr": 0.01, STEP_KEY: 0},
    ]
    assert run["artifacts"] == ["curves"]
    assert run["exit_code"] == 0


def test_a_failed_run_exits_non_zero_and_a_pickled_copy_keeps_the_id(tmp_path: Path) -> None:
    logger = WandbLogger(save_dir=tmp_path, offline=True)
    logger.log_metrics({"loss": 1.0}, step=0)
    copy = pickle.loads(pickle.dumps(logger))  # Fabric(strategy="ddp_spawn") pickles its loggers
    assert copy.version == logger.version and copy.log_dir is None
    logger.finalize("failed")
    assert read_run(tmp_path)["exit_code"] == 1


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match=r"WandbLogger\(offline='yes'\) must be True or False"):
        WandbLogger(offline="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"WandbLogger\(version='a', id='b'\) names two runs"):
        WandbLogger(version="a", id="b")
    with pytest.raises(FileNotFoundError, match=r"log_artifact\(local_path='nope.png'\): there is no such"):
        WandbLogger(offline=True).log_artifact("nope.png")


def test_missing_wandb_gives_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    logger = WandbLogger(save_dir=tmp_path, offline=True)
    with pytest.raises(
        ModuleNotFoundError, match=r"WandbLogger needs `wandb`.*pip install 'treadle\[wandb\]'"
    ):
        logger.log_metrics({"loss": 1.0}, step=0)
    assert list(tmp_path.iterdir()) == []


def test_importing_and_constructing_does_not_import_wandb(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from treadle.loggers import WandbLogger
        logger = WandbLogger(save_dir={os.fspath(tmp_path)!r}, offline=True)
        print(logger.name, logger.version, logger.log_dir)
        logger.save()
        logger.finalize("success")
        assert not [m for m in sys.modules if m.startswith("wandb")]
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
