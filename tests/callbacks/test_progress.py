from __future__ import annotations

import io
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.callbacks.tiny_trainer import TinyRegression, fit_tiny, trainer_class
from treadle import Fabric
from treadle.callbacks import progress
from treadle.callbacks.progress import ProgressBar, write_line


class CountingLoss(torch.Tensor):
    """A scalar tensor that counts how often its value is read back to the host."""

    reads = 0

    def item(self) -> Any:  # type: ignore[override]
        CountingLoss.reads += 1
        return super().item()


def fabric_loop(bar: ProgressBar, epochs: int = 2, batches: int = 6, val: bool = True) -> None:
    fabric = Fabric(accelerator="cpu", callbacks=[bar])
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    for epoch in range(epochs):
        fabric.call("on_train_epoch_start", epoch=epoch, total=batches)
        for batch_idx in range(batches):
            loss = model(torch.ones(2, 4)).pow(2).mean()
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            fabric.call(
                "on_train_batch_end", loss=loss.detach().as_subclass(CountingLoss), batch_idx=batch_idx
            )
        fabric.call("on_train_epoch_end")
        if val:
            fabric.call("on_validation_start", total=2)
            for _ in range(2):
                fabric.call("on_validation_batch_end")
            fabric.call("on_validation_end", metrics={"val_loss": 0.25 + epoch, "train_acc": 0.5})
    fabric.call("on_fit_end")


def test_plain_fallback_prints_epoch_batch_loss_and_validation_metric() -> None:
    out = io.StringIO()
    CountingLoss.reads = 0
    fabric_loop(ProgressBar(refresh_rate=3, backend="plain", file=out))
    lines = out.getvalue().splitlines()
    batch_lines = [line for line in lines if " batch " in line]
    assert [line.split(":")[0] for line in batch_lines] == [
        "Epoch 1 batch 3/6",
        "Epoch 1 batch 6/6",
        "Epoch 2 batch 3/6",
        "Epoch 2 batch 6/6",
    ]
    assert all("loss=" in line and "step=" in line for line in batch_lines)
    assert "Epoch 1 validation: val_loss=0.25" in lines
    # The metric seen in epoch 1's validation is shown while epoch 2 trains; non-"val" metrics are not.
    assert "val_loss=0.25" in batch_lines[2]
    assert "train_acc" not in out.getvalue()
    # The loss is read from the device only when the display refreshes: 4 of the 12 batches.
    assert CountingLoss.reads == 4


class FakeClock:
    """Stands in for time.perf_counter in the progress module: seconds pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_come_by_time_with_rate_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    out = io.StringIO()
    bar = ProgressBar(backend="plain", interval=10, file=out)
    assert bar.refresh_rate is None and not bar.is_tqdm
    bar.on_train_epoch_start(epoch=0, total=100)
    for _ in range(100):
        clock.now += 0.25  # 4 batches a second: a line every 40 batches
        bar.on_train_batch_end(loss=0.5)
    bar.on_train_epoch_end()
    lines = out.getvalue().splitlines()
    assert lines == [
        "Epoch 1 batch 40/100: step=40, loss=0.5 [4 it/s, ETA 0:15]",
        "Epoch 1 batch 80/100: step=80, loss=0.5 [4 it/s, ETA 0:05]",
        "Epoch 1 done: 100 batches in 25.0s (4 it/s), step=100, loss=0.5",
    ]


def test_auto_backend_prints_plain_lines_into_a_file(tmp_path: Path) -> None:
    # Regression: into a log file (CI, nohup, SLURM) the tqdm bar wrote a carriage-return redraw per batch.
    pytest.importorskip("tqdm")
    with open(tmp_path / "log.txt", "w") as log:
        trainer = fit_tiny(callbacks=[ProgressBar(file=log)])
    text = (tmp_path / "log.txt").read_text()
    assert "\r" not in text
    lines = text.splitlines()
    # One line per epoch, carrying that epoch's validation metrics; the fit's ETA until the last one.
    assert [line.split(":")[0] for line in lines] == ["Epoch 1/2 done", "Epoch 2/2 done"]
    assert "val_loss=" in lines[0] and "[fit ETA " in lines[0]
    assert f"step={trainer.global_step}" in lines[1] and "ETA" not in lines[1]


def test_auto_backend_draws_tqdm_on_a_terminal() -> None:
    pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert ProgressBar(file=Terminal()).is_tqdm
    assert not ProgressBar(file=io.StringIO()).is_tqdm
    assert ProgressBar(backend="tqdm", file=io.StringIO()).is_tqdm  # asked for by name: tqdm anyway


def test_the_last_batch_shows_its_own_loss_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: the 100% bar showed a loss read up to half a second earlier until validation ended.
    pytest.importorskip("tqdm")
    monkeypatch.setattr(progress, "_LOSS_READ_SECONDS", math.inf)
    out = io.StringIO()
    bar = ProgressBar(backend="tqdm", file=out)
    bar.on_train_epoch_start(epoch=0, total=3)
    for loss in (3.0, 2.0, 0.125):
        bar.on_train_batch_end(loss=loss)
    assert "loss=0.125" in out.getvalue()  # before on_validation_* or on_train_epoch_end
    bar.on_fit_end()


def test_interval_must_be_a_positive_number() -> None:
    for interval in (0, -1.0, math.inf, "10"):
        with pytest.raises(ValueError, match=rf"ProgressBar\(interval={interval!r}\) must be a positive"):
            ProgressBar(interval=interval)  # type: ignore[arg-type]


def test_tqdm_bar_shows_loss_step_and_val_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    # However slow this machine, the loss is read once, then only at each epoch's end.
    monkeypatch.setattr(progress, "_LOSS_READ_SECONDS", math.inf)
    out = io.StringIO()
    CountingLoss.reads = 0
    bar = ProgressBar(backend="tqdm", file=out)
    assert bar.is_tqdm and bar.refresh_rate is None  # None: every batch for the bar
    fabric_loop(bar, epochs=2, batches=4)
    text = out.getvalue()
    assert "Epoch 1" in text and "Epoch 2" in text
    assert "4/4" in text
    assert "step=8" in text
    assert "val_loss=0.25" in text
    # The bar redraws every batch but reads the loss at most every _LOSS_READ_SECONDS and at each epoch's
    # last batch, so steps do not wait for the device.
    assert CountingLoss.reads == 3
    assert "loss=" in text


def test_refresh_rate_zero_shows_nothing_and_reads_nothing() -> None:
    out = io.StringIO()
    CountingLoss.reads = 0
    fabric_loop(ProgressBar(refresh_rate=0, backend="plain", file=out))
    assert out.getvalue() == ""
    assert CountingLoss.reads == 0


def test_rank_zero_only() -> None:
    assert ProgressBar.rank_zero_only is True


def test_defaults_to_stderr_at_start_time(capsys: pytest.CaptureFixture[str]) -> None:
    fabric_loop(ProgressBar(refresh_rate=6, backend="plain"), epochs=1, val=False)
    captured = capsys.readouterr()
    assert "Epoch 1 batch 6/6" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"refresh_rate": -1}, "refresh_rate=-1"),
        ({"refresh_rate": 1.5}, "refresh_rate=1.5"),
        ({"backend": "rich"}, "backend='rich'"),
        ({"metrics": "val_loss"}, "metrics='val_loss'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(".", r"\.")):
        ProgressBar(**kwargs)


def test_tqdm_missing_gives_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert not ProgressBar().is_tqdm  # auto falls back to plain lines
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'treadle\[progress\]'"):
        ProgressBar(backend="tqdm")


def test_explicit_metric_names_and_output_dict_loss() -> None:
    out = io.StringIO()
    bar = ProgressBar(refresh_rate=1, backend="plain", metrics=["acc"], file=out)
    bar.on_train_epoch_start()
    bar.on_validation_end(metrics={"acc": torch.tensor(0.75), "val_loss": 1.0})
    bar.on_train_batch_end(output={"loss": torch.tensor(2.0)})
    assert "Epoch 1 batch 1: step=1, loss=2, acc=0.75" in out.getvalue()


def test_trainer_progress_bar() -> None:
    out = io.StringIO()
    trainer = fit_tiny(callbacks=[ProgressBar(refresh_rate=2, backend="plain", file=out)])
    text = out.getvalue()
    assert "Epoch 1/2 batch 2" in text
    assert f"step={trainer.global_step}" in text
    assert "val_loss=" in text


def test_trainer_default_bar_reads_the_loss_rarely(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Regression: the default tqdm bar read loss.item() every batch, one host-device sync per step.
    pytest.importorskip("tqdm")
    reads = 0
    scalar = progress._scalar

    def counting(value: Any, name: str) -> float | None:
        nonlocal reads
        reads += isinstance(value, torch.Tensor)
        return scalar(value, name)

    monkeypatch.setattr(progress, "_scalar", counting)
    Trainer = trainer_class()
    x = torch.randn(64, 1)
    trainer = Trainer(accelerator="cpu", max_epochs=1, log_every_n_steps=1000, checkpoint_dir=tmp_path)
    assert any(isinstance(callback, ProgressBar) for callback in trainer.fabric.callbacks)
    trainer.fit(TinyRegression(), DataLoader(TensorDataset(x, 2 * x), batch_size=1))
    assert trainer.global_step == 64
    # One read at the first refresh and one at the epoch's end, plus one per half second of training.
    assert 1 <= reads <= 6


def test_write_line_goes_through_tqdm_write_once_tqdm_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    tqdm = pytest.importorskip("tqdm")
    written: list[tuple[str, Any]] = []
    monkeypatch.setattr(tqdm.tqdm, "write", lambda line, file=None: written.append((line, file)))
    out = io.StringIO()
    write_line("checkpoint saved", out)
    assert written == [("checkpoint saved", out)]
    assert out.getvalue() == ""  # tqdm.write printed it (here: recorded it), not print


def test_leave_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"ProgressBar\(leave='no'\) must be True or False"):
        ProgressBar(leave="no")  # type: ignore[arg-type]


def fit_resumed_mid_epoch(tmp_path: Path, bar: ProgressBar) -> Any:
    """10 batches in one epoch: SIGTERM after batch 5 (saves last.ckpt), then resume with `bar`."""
    Trainer = trainer_class()
    x = torch.randn(80, 1)
    loader = DataLoader(TensorDataset(x, 2 * x), batch_size=8)

    class Preempt:
        def on_train_batch_end(self, batch_idx: int) -> None:
            if batch_idx == 4:
                os.kill(os.getpid(), signal.SIGTERM)

    options: dict[str, Any] = {"accelerator": "cpu", "max_epochs": 1, "checkpoint_dir": tmp_path}
    first = Trainer(callbacks=[Preempt()], enable_progress_bar=False, **options)
    first.fit(TinyRegression(), loader)
    assert first.progress.batches_done == 5
    resumed = Trainer(callbacks=[bar], **options)
    resumed.fit(TinyRegression(), loader, ckpt_path="last")
    assert resumed.global_step == 10
    return resumed


def test_a_trainer_resumed_mid_epoch_counts_on_from_its_batches(tmp_path: Path) -> None:
    # Regression: the resumed run printed "batch 1/10" for the epoch's 6th batch.
    out = io.StringIO()
    fit_resumed_mid_epoch(tmp_path, ProgressBar(backend="plain", refresh_rate=1, file=out))
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines if " batch " in line] == [
        f"Epoch 1/1 batch {n}/10" for n in range(6, 11)
    ]
    assert any(line.startswith("Epoch 1/1 done: 10 batches (5 after resuming) in ") for line in lines)


def test_a_tqdm_bar_resumed_mid_epoch_starts_at_the_batches_done(tmp_path: Path) -> None:
    # Regression: the bar started at 0 and stopped at 5/10.
    pytest.importorskip("tqdm")
    out = io.StringIO()
    fit_resumed_mid_epoch(tmp_path, ProgressBar(backend="tqdm", file=out))
    text = out.getvalue()
    assert "5/10" in text and "10/10" in text
    assert "| 0/10" not in text and "| 1/10" not in text


def test_a_fabric_loop_resumed_mid_epoch_counts_from_batch_idx() -> None:
    out = io.StringIO()
    bar = ProgressBar(backend="plain", refresh_rate=2, file=out)
    bar.on_train_epoch_start(epoch=0, total=10)
    for batch_idx in range(6, 10):
        bar.on_train_batch_end(loss=1.0, batch_idx=batch_idx)
    bar.on_train_epoch_end()
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == [
        "Epoch 1 batch 8/10",
        "Epoch 1 batch 10/10",
        "Epoch 1 done",
    ]
    assert "done: 10 batches (4 after resuming)" in out.getvalue()


@pytest.mark.parametrize("backend", ["plain", "tqdm"])
def test_numpy_and_other_fabric_log_values_are_shown(backend: str) -> None:
    # Regression: numpy scalars, which Fabric.log accepts, were silently left out.
    if backend == "tqdm":
        pytest.importorskip("tqdm")
    out = io.StringIO()
    bar = ProgressBar(backend=backend, refresh_rate=1, file=out)  # type: ignore[arg-type]
    bar.on_train_epoch_start(epoch=0, total=1)
    bar.on_validation_end(
        metrics={
            "val_loss": np.float32(0.25),
            "val_count": np.int64(7),
            "val_acc": torch.tensor(0.5),
            "val_best": True,
            "val_text": "n/a",  # not a number: left out, as before
            "val_vector": torch.ones(3),  # not a single number: left out
        }
    )
    bar.on_train_batch_end(loss=np.float64(2.0))
    bar.on_train_epoch_end()
    text = out.getvalue()
    assert "loss=2, val_loss=0.25, val_count=7, val_acc=0.5, val_best=1" in text
    assert "val_text" not in text and "val_vector" not in text
