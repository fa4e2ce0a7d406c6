from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.callbacks.tiny_trainer import FailsAtBatch, TinyRegression, fit_tiny
from treadle import Fabric
from treadle.callbacks.profiler import BACKWARD, BATCH, DATA, EPOCH, FORWARD, OPTIMIZER, VALIDATION, Profiler
from treadle.callbacks.timer import IterationTimer


class Slow:
    """A callback whose batch-end hook costs 5 ms."""

    def on_train_batch_end(self) -> None:
        time.sleep(0.005)


def fabric_loop(profiler: Profiler, batches: int = 6) -> None:
    fabric = Fabric(accelerator="cpu", callbacks=[Slow(), profiler])
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    fabric.call("on_train_epoch_start")
    for _ in range(batches):
        fabric.call("on_train_batch_start")
        loss = model(torch.ones(4, 8)).pow(2).mean()
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        fabric.call("on_train_batch_end")
    fabric.call("on_train_epoch_end")
    fabric.call("on_train_end")


def test_fabric_loop_table_sections_and_hooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profiler = Profiler(output=tmp_path / "profile.txt")
    fabric_loop(profiler)
    assert profiler.sections[FORWARD].calls == 6
    assert profiler.sections[BACKWARD].calls == 6
    assert profiler.sections[OPTIMIZER].calls == 6
    assert profiler.sections[BATCH].calls == 6
    assert profiler.sections[DATA].calls == 5
    assert profiler.sections[EPOCH].calls == 1
    slow = profiler.hooks["Slow.on_train_batch_end"]
    assert slow.calls == 6 and slow.total >= 0.03
    # The callback's 5 ms per batch is reported as the callback's, not as the loop's.
    assert profiler.sections[BATCH].total < slow.total
    assert profiler.sections[EPOCH].total < slow.total
    text = (tmp_path / "profile.txt").read_text()
    assert text.startswith("Profiler: ")
    lines = text.splitlines()
    hook_header = lines.index(next(line for line in lines if line.startswith("Callback hook")))
    assert lines[hook_header + 2].startswith("Slow.on_train_batch_end")  # the costliest hook first
    section_rows = [
        line.split("  ")[0].strip() for line in lines[3:hook_header] if line and not line.startswith("-")
    ]
    assert section_rows[0] == EPOCH
    printed = capsys.readouterr().out
    assert "Loop section" in printed and "Profiler: report written to" in printed


def test_report_printed_once_and_written_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profiler = Profiler(output=tmp_path / "deep" / "profile.txt")
    fabric_loop(profiler)
    capsys.readouterr()
    profiler.report()
    assert capsys.readouterr().out == ""
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["profile.txt"]


def test_torch_trace_window_writes_chrome_trace(tmp_path: Path) -> None:
    profiler = Profiler(
        output=tmp_path / "profile.txt", trace=True, trace_wait=1, trace_warmup=1, trace_active=2
    )
    fabric_loop(profiler, batches=6)
    assert profiler.trace_path == tmp_path / "trace.json"
    trace = json.loads((tmp_path / "trace.json").read_text())
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert any("addmm" in name or "linear" in name for name in names)
    assert "torch.profiler trace:" in (tmp_path / "profile.txt").read_text()


def test_bad_trace_window() -> None:
    with pytest.raises(ValueError, match=r"Profiler\(trace_active=0\) must be an int >= 1"):
        Profiler(trace_active=0)


def test_trainer_profiles_sections_and_every_callback(tmp_path: Path) -> None:
    profiler = Profiler(output=tmp_path / "profile.txt")
    trainer = fit_tiny(callbacks=[IterationTimer(every_n_steps=0, file=io.StringIO()), profiler])
    assert profiler.sections[FORWARD].calls == trainer.global_step == 8
    assert profiler.sections[VALIDATION].calls == 2
    assert profiler.sections[DATA].calls == 6  # within each epoch of 4 batches
    assert profiler.hooks["IterationTimer.on_train_batch_end"].calls == 8
    assert profiler.hooks["TinyRegression.on_validation_epoch_end"].calls == 2  # the model's own hooks
    text = (tmp_path / "profile.txt").read_text()
    assert "IterationTimer.on_train_batch_end" in text and OPTIMIZER in text


@pytest.mark.parametrize("flag", ["sync_cuda", "trace", "record_shapes"])
def test_flags_must_be_bools(flag: str) -> None:
    with pytest.raises(TypeError, match=rf"Profiler\({flag}='x'\) must be True or False"):
        Profiler(**{flag: "x"})


def test_output_must_be_a_path() -> None:
    # Regression: Profiler(output=3) failed inside pathlib with a message that did not name the argument.
    with pytest.raises(TypeError, match=r"Profiler\(output=3\) must be a file path"):
        Profiler(output=3)  # type: ignore[arg-type]


def test_report_and_trace_are_written_through_atomic_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the trace went to a pid-named temporary file without fsync, beside the shared writer.
    from treadle.callbacks import profiler as profiler_module

    written: list[str] = []
    atomic_open = profiler_module.atomic_open

    def recording(path: Any, mode: Any) -> Any:
        written.append(Path(path).name)
        return atomic_open(path, mode)

    monkeypatch.setattr(profiler_module, "atomic_open", recording)
    profiler = Profiler(
        output=tmp_path / "out" / "profile.txt", trace=True, trace_wait=0, trace_warmup=1, trace_active=1
    )
    fabric_loop(profiler, batches=3)
    profiler.report()
    assert set(written) == {"profile.txt", "trace.json"}
    assert {path.name for path in (tmp_path / "out").iterdir()} == {"profile.txt", "trace.json"}


def test_an_exception_in_fit_stops_the_torch_profiler(tmp_path: Path) -> None:
    profiler = Profiler(
        output=tmp_path / "profile.txt", trace=True, trace_wait=1, trace_warmup=1, trace_active=3
    )
    with pytest.raises(KeyboardInterrupt):
        fit_tiny(callbacks=[profiler], model=FailsAtBatch(bad_batch=3), max_epochs=1)  # fails while recording
    assert not torch.autograd._profiler_enabled()
    assert profiler.trace_path is None and not (tmp_path / "trace.json").exists()
    profiler.on_exception()  # nothing running: a no-op


def test_each_trainer_fit_is_profiled_afresh(tmp_path: Path) -> None:
    from tests.callbacks.tiny_trainer import loaders, trainer_class

    profiler = Profiler(output=tmp_path / "profile.txt")
    timer = IterationTimer(every_n_steps=0, file=io.StringIO())
    trainer = trainer_class()(
        accelerator="cpu", max_epochs=2, callbacks=[timer, profiler], enable_progress_bar=False
    )
    train, _ = loaders()
    trainer.fit(TinyRegression(), train)
    time.sleep(0.2)  # idle between fits: not part of the second fit's run
    began = time.perf_counter()
    trainer.fit(TinyRegression(), train)
    second_fit = time.perf_counter() - began
    assert profiler.sections[FORWARD].calls == 8  # not 16
    assert profiler.hooks["IterationTimer.on_train_batch_end"].calls == 8
    first_line = (tmp_path / "profile.txt").read_text().splitlines()[0]
    run = float(first_line.split()[1])
    assert first_line.endswith("s from the fit's start to this report")
    assert run <= second_fit
