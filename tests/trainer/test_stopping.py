"""Stopping: requested by a callback, mid-epoch or at its end, and agreed across two real ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.models import Classifier, loader, trainer


class Events:
    def __init__(self) -> None:
        self.names: list[str] = []

    def on_train_epoch_end(self) -> None:
        self.names.append("train_epoch_end")

    def on_validation_end(self) -> None:
        self.names.append("validation_end")

    def on_train_end(self) -> None:
        self.names.append("train_end")


def test_stop_mid_epoch_ends_the_epoch_without_its_validation() -> None:
    class StopAtThree:
        def on_train_batch_end(self, trainer: Any) -> None:
            if trainer.global_step == 3:
                trainer.request_stop("enough")

    events = Events()
    fitted = trainer(max_epochs=5, callbacks=[StopAtThree(), events])
    fitted.fit(Classifier(), loader(), loader(n=16))
    assert (fitted.global_step, fitted.current_epoch, fitted.progress.batches_done) == (3, 0, 3)
    assert fitted.should_stop and fitted.stop_reason == "enough"
    assert events.names == ["train_epoch_end", "train_end"]


def test_stop_flag_set_in_validation_finishes_that_epoch() -> None:
    class StopAfterSecondValidation:
        def __init__(self) -> None:
            self.validations = 0

        def on_validation_end(self, trainer: Any) -> None:
            self.validations += 1
            if self.validations == 2:
                trainer.should_stop = True

    events = Events()
    fitted = trainer(max_epochs=5, callbacks=[StopAfterSecondValidation(), events])
    fitted.fit(Classifier(), loader(), loader(n=16))
    assert (fitted.global_step, fitted.current_epoch) == (16, 2)
    assert events.names == ["validation_end", "train_epoch_end"] * 2 + ["train_end"]


def test_stop_before_training_starts() -> None:
    class StopAtStart:
        def on_train_start(self, trainer: Any) -> None:
            trainer.request_stop("nothing to do")

    fitted = trainer(max_epochs=5, callbacks=[StopAtStart()])
    fitted.fit(Classifier(), loader())
    assert fitted.global_step == 0 and fitted.stop_reason == "nothing to do"


@pytest.mark.distributed
def test_stop_requested_on_one_rank_stops_both_at_the_same_step(tmp_path: Path) -> None:
    job = Path(__file__).with_name("ddp_stop_job.py")
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    result = subprocess.run(
        [sys.executable, str(job), str(tmp_path)], env=environment, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["global_step"] == rank1["global_step"] == 3
    assert rank0["should_stop"] and rank1["should_stop"]
    assert rank1["stop_reason"] == "rank 1 asked"
    assert rank0["stop_reason"] == "stop requested on another rank"
    # Accumulation skipped the sync on the first batch of each step, and the weights still agree.
    assert rank0["weights"] == rank1["weights"]
    assert rank0["val_loss"] == rank1["val_loss"]
