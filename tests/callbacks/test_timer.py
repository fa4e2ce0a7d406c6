from __future__ import annotations

import io
import math
import re
import time
from typing import Any

import pytest
import torch
from torch import nn

from tests.callbacks.tiny_trainer import fit_tiny
from treadle import Fabric
from treadle.callbacks.timer import IterationTimer, TimingSummary, _quantile


def fabric_loop(
    timer: IterationTimer, iterations: int, pause: float = 0.0, batch_start: bool = False
) -> None:
    fabric = Fabric(accelerator="cpu", callbacks=[timer])
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    fabric.call("on_train_start")
    for _ in range(iterations):
        if batch_start:
            fabric.call("on_train_batch_start")
        loss = model(torch.ones(2, 4)).pow(2).mean()
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if pause:
            time.sleep(pause)
        fabric.call("on_train_batch_end", loss=loss)
    fabric.call("on_train_end")


def test_prints_every_n_and_summary_in_fabric_loop() -> None:
    out = io.StringIO()
    timer = IterationTimer(every_n_steps=2, file=out)
    fabric_loop(timer, iterations=6, pause=0.01)
    lines = out.getvalue().splitlines()
    # Without on_train_batch_start the first iteration has no start: iterations 2..6 are timed.
    assert [line.split(":")[0] for line in lines] == [
        "iteration 2",
        "iteration 4",
        "iteration 6",
        "IterationTimer",
    ]
    assert "(last 2: mean" in lines[1]
    summary = timer.summary()
    assert summary.count == 5
    assert all(0.009 <= seconds < 0.5 for seconds in timer.durations)
    assert summary.median >= 0.009
    assert re.match(
        r"IterationTimer: 5 iterations, mean [\d.]+ ms, median [\d.]+ ms, p90 [\d.]+ ms", lines[-1]
    )


def test_batch_start_times_the_first_iteration_too() -> None:
    timer = IterationTimer(every_n_steps=0, file=io.StringIO())
    fabric_loop(timer, iterations=4, batch_start=True)
    assert timer.summary().count == 4


def test_summary_printed_once_and_zero_prints_only_summary() -> None:
    out = io.StringIO()
    timer = IterationTimer(every_n_steps=0, file=out)
    fabric_loop(timer, iterations=3)
    timer.on_fit_end()  # the Trainer fires both on_train_end and on_fit_end
    assert len(out.getvalue().splitlines()) == 1


def test_validation_breaks_the_chain() -> None:
    timer = IterationTimer(every_n_steps=0, file=io.StringIO())
    for _ in range(3):
        timer.on_train_batch_end(loss=torch.tensor(1.0))
    timer.on_validation_start()
    time.sleep(0.05)
    timer.on_train_batch_end(loss=torch.tensor(1.0))  # no start after validation: not timed
    timer.on_train_batch_end(loss=torch.tensor(1.0))
    durations = timer.durations
    assert len(durations) == 3
    assert max(durations) < 0.05


def test_quantiles_and_empty_summary() -> None:
    assert _quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert _quantile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9) == pytest.approx(9.1)
    empty = IterationTimer().summary()
    assert empty.count == 0 and math.isnan(empty.mean)
    assert str(empty) == "no iterations timed"
    assert str(TimingSummary(2, 0.5, 0.5, 0.5, 1.0)).startswith("2 iterations, mean 500.00 ms")


@pytest.mark.parametrize("bad", [-1, 1.5, True, "5"])
def test_bad_every_n_steps(bad: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"IterationTimer(every_n_steps={bad!r})")):
        IterationTimer(every_n_steps=bad)


class FakeEvent:
    """Stands in for torch.cuda.Event: completes once `lag` more boundaries were recorded, like a GPU that
    runs behind the host."""

    lag = 2
    records = 0
    synchronize_calls = 0

    def __init__(self, enable_timing: bool = False) -> None:
        self.index = 0

    def record(self, stream: Any = None) -> None:
        FakeEvent.records += 1
        self.index = FakeEvent.records

    def query(self) -> bool:
        return FakeEvent.records >= self.index + FakeEvent.lag

    def synchronize(self) -> None:
        FakeEvent.synchronize_calls += 1

    def elapsed_time(self, end: FakeEvent) -> float:
        return (end.index - self.index) * 10.0  # each boundary 10 ms after the previous one


def test_event_path_reads_late_without_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    FakeEvent.synchronize_calls = FakeEvent.records = 0
    out = io.StringIO()
    timer = IterationTimer(every_n_steps=3, device="cuda", file=out)
    printed_after = []
    for _ in range(9):
        timer.on_train_batch_end()
        printed_after.append(len(out.getvalue().splitlines()))
    # A line is due at 3, 6 and 9; each is printed once its event has completed, two boundaries later.
    assert printed_after == [0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert FakeEvent.synchronize_calls == 0
    assert out.getvalue().splitlines()[0].startswith("iteration 3: 10.00 ms")
    summary = timer.summary()  # blocks for the rest
    assert FakeEvent.synchronize_calls >= 1
    assert summary.count == 8
    assert summary.median == pytest.approx(0.010)
    assert out.getvalue().splitlines()[-1].startswith("iteration 9: 10.00 ms")


def test_trainer_iteration_timer() -> None:
    out = io.StringIO()
    timer = IterationTimer(every_n_steps=2, file=out)
    trainer = fit_tiny(callbacks=[timer])
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("IterationTimer: ")
    # 2 epochs of 4 batches; each epoch's first batch is timed from on_train_batch_start.
    assert timer.summary().count == 8 == trainer.num_training_batches * 2
    assert sum(1 for line in lines if line.startswith("iteration ")) == 4


def test_device_must_be_a_torch_device() -> None:
    # Regression: IterationTimer(device="gpu") raised torch's RuntimeError, which does not name the argument.
    with pytest.raises(ValueError, match=r"IterationTimer\(device='gpu'\) is not a torch device"):
        IterationTimer(device="gpu")


def test_each_trainer_fit_is_timed_afresh() -> None:
    from tests.callbacks.tiny_trainer import TinyRegression, loaders, trainer_class

    out = io.StringIO()
    timer = IterationTimer(every_n_steps=0, file=out)
    trainer = trainer_class()(accelerator="cpu", max_epochs=2, callbacks=[timer], enable_progress_bar=False)
    train, _ = loaders()
    trainer.fit(TinyRegression(), train)
    trainer.fit(TinyRegression(), train)
    assert timer.summary().count == 8  # the second fit's 8 iterations, not 16
    summaries = [line for line in out.getvalue().splitlines() if line.startswith("IterationTimer: ")]
    assert len(summaries) == 2 and all(line.startswith("IterationTimer: 8 iterations") for line in summaries)


def test_a_fabric_loop_without_on_fit_start_keeps_accumulating() -> None:
    timer = IterationTimer(every_n_steps=0, file=io.StringIO())
    fabric_loop(timer, iterations=3, batch_start=True)
    fabric_loop(timer, iterations=3, batch_start=True)
    assert timer.summary().count == 6
