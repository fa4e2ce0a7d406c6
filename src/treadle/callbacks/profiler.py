"""Profiler: what each callback hook and each section of the training loop costs, and optional torch traces."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from treadle.callbacks.arguments import check_bool
from treadle.callbacks.hooks import Callback
from treadle.callbacks.progress import write_line
from treadle.files import atomic_open

__all__ = ["Profiler"]

# Loop sections, timed between the hooks that bound them.
DATA = "data loading (between batches)"
FORWARD = "forward"
BACKWARD = "backward"
OPTIMIZER = "optimizer step"
BATCH = "training batch (total)"
EPOCH = "training epoch (total)"
VALIDATION = "validation"


@dataclass
class _Stat:
    calls: int = 0
    total: float = 0.0
    max: float = 0.0

    def clear(self) -> None:
        self.calls, self.total, self.max = 0, 0.0, 0.0

    def add(self, seconds: float) -> None:
        self.calls += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds


class Profiler(Callback):
    """Times every hook of every callback and the sections of the training loop; prints a table at the end
    and writes it to a file. Optionally records a ``torch.profiler`` trace of a few steps.

    Callback hooks: each call of each callback's hook is timed with the host clock (the Profiler wraps
    them through the Fabric's dispatcher), so the table shows what every callback costs per step. Nested
    hooks (e.g. ``on_save_checkpoint`` inside a checkpointing callback) count inside their caller's time too.

    Loop sections are the host time between the hooks that bound them, minus the callback time spent in
    between: data loading (from a batch's end to the next batch's start: fetching the batch and the loop's
    own bookkeeping), forward (``on_train_batch_start`` to ``on_before_backward``), backward, optimizer
    step, the whole training batch, the whole epoch and validation. In the Trainer every section is
    reported; in a Fabric-only loop the sections whose hooks you fire (``fabric.backward`` and the set-up
    optimizer fire the backward and optimizer-step hooks themselves). On CUDA, kernels run asynchronously,
    so host time lands where the host waits for the GPU; ``sync_cuda=True`` synchronises at every section
    boundary to attribute GPU time exactly, at a cost in speed.

    The Profiler runs on global rank 0 only. Register it when you create the Fabric, so that it sees
    ``on_after_setup``; at the end fire ``on_train_end`` (the Trainer does) or call ``report()``.

    Each ``on_fit_start`` (every ``Trainer.fit``) starts afresh: the table, its "% of run" and the trace
    cover that fit only, not the time between fits. A Fabric-only loop that fires no ``on_fit_start``
    keeps accumulating from the first hook it saw.

    Args:
        output: the report file; default ``profile.txt`` in the first logger's folder, else in the current
            folder. Written atomically.
        sync_cuda: synchronise CUDA at section boundaries.
        trace: record a ``torch.profiler`` trace: ``trace_wait`` steps skipped, ``trace_warmup`` steps
            warming up, ``trace_active`` steps recorded, then exported as a Chrome trace
            (``trace.json``, next to the report) that Perfetto (ui.perfetto.dev) or TensorBoard opens.
            A step ends at each ``on_train_batch_end``.
        trace_wait: steps skipped before the trace window.
        trace_warmup: steps the profiler warms up for, not recorded.
        trace_active: steps recorded.
        record_shapes: record operator input shapes in the trace.

    Raises:
        ValueError: a trace window length is negative (or ``trace_active`` is 0).
        TypeError: ``output`` is not a path, or a flag is not a bool.

    Example::

        profiler = Profiler(trace=True)
        trainer = Trainer(max_epochs=1, callbacks=[IterationTimer(), profiler])
        trainer.fit(model, train_loader)  # prints the table; writes profile.txt and trace.json

        # A Fabric-only loop
        fabric = Fabric(callbacks=[profiler])
        ...
        profiler.report()
    """

    rank_zero_only = True

    def __init__(
        self,
        output: str | os.PathLike[str] | None = None,
        sync_cuda: bool = False,
        trace: bool = False,
        trace_wait: int = 1,
        trace_warmup: int = 1,
        trace_active: int = 3,
        record_shapes: bool = False,
    ) -> None:
        for argument, value, least in (
            ("trace_wait", trace_wait, 0),
            ("trace_warmup", trace_warmup, 0),
            ("trace_active", trace_active, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"Profiler({argument}={value!r}) must be an int >= {least}.")
        if output is not None and not isinstance(output, (str, os.PathLike)):
            raise TypeError(
                f"Profiler(output={output!r}) must be a file path (str or os.PathLike), e.g. "
                "output='profile.txt', or None for profile.txt in the first logger's folder."
            )
        self.output = None if output is None else Path(output)
        self.sync_cuda = check_bool("Profiler", "sync_cuda", sync_cuda)
        self.trace = check_bool("Profiler", "trace", trace)
        self.trace_wait = trace_wait
        self.trace_warmup = trace_warmup
        self.trace_active = trace_active
        self.record_shapes = check_bool("Profiler", "record_shapes", record_shapes)
        self.trace_path: Path | None = None
        """Where the Chrome trace was written, once it was."""
        self.hooks: dict[str, _Stat] = {}
        self.sections: dict[str, _Stat] = {}
        self._open: dict[str, tuple[float, float]] = {}  # section -> (start, hook seconds at start)
        self._hook_seconds = 0.0  # time inside other callbacks' hooks, outermost calls only
        self._depth = 0
        self._started: float | None = None
        self._instrumented: Any = None  # the Fabric whose dispatcher times our hooks
        self._fabric: Any = None
        self._in_fit = False
        self._fits = 0  # on_fit_start seen: the run is timed from the latest one
        self._reported = False
        self._torch_profiler: Any = None
        self._trace_steps = 0

    # --- instrumentation ---------------------------------------------------------------------------------
    def _instrument(self, fabric: Any) -> None:
        if fabric is None or fabric is self._instrumented:
            return
        self._fabric = fabric
        self._instrumented = fabric
        fabric.instrument_callbacks(self._wrap)

    def _wrap(self, callback: object, hook: str, method: Callable[..., Any]) -> Callable[..., Any]:
        if callback is self:
            return method  # our own markers are not part of what we measure
        stat = self.hooks.setdefault(f"{type(callback).__name__}.{hook}", _Stat())
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            start = clock()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = clock() - start
                self._depth -= 1
                stat.add(elapsed)
                if self._depth == 0:
                    self._hook_seconds += elapsed

        return timed

    # --- hooks -------------------------------------------------------------------------------------------
    def on_after_setup(self, fabric: Any = None) -> None:
        self._touch()
        self._instrument(fabric)

    def on_fit_start(self, fabric: Any = None) -> None:
        self._reset()
        self._fits += 1
        self._touch()
        self._in_fit = True
        self._reported = False
        self._instrument(fabric)

    def on_train_start(self, fabric: Any = None) -> None:
        self._touch()
        self._reported = False
        self._instrument(fabric)

    def on_train_epoch_start(self) -> None:
        self._touch()
        self._open.pop(DATA, None)
        self._begin(EPOCH)

    def on_train_batch_start(self) -> None:
        self._touch()
        self._start_trace()
        self._end(DATA)
        self._begin(BATCH)
        self._begin(FORWARD)

    def on_before_backward(self) -> None:
        self._touch()
        self._end(FORWARD)
        self._begin(BACKWARD)

    def on_after_backward(self) -> None:
        self._end(BACKWARD)

    def on_before_optimizer_step(self) -> None:
        self._touch()
        self._begin(OPTIMIZER)

    def on_after_optimizer_step(self) -> None:
        self._end(OPTIMIZER)

    def on_train_batch_end(self) -> None:
        self._touch()
        self._end(BATCH)
        self._step_trace()
        self._begin(DATA)

    def on_validation_start(self) -> None:
        self._touch()
        self._open.pop(DATA, None)
        self._begin(VALIDATION)

    def on_validation_end(self) -> None:
        self._end(VALIDATION)

    def on_train_epoch_end(self) -> None:
        self._open.pop(DATA, None)
        self._end(EPOCH)

    def on_train_end(self) -> None:
        self._stop_trace()
        if not self._in_fit:
            self.report()

    def on_fit_end(self) -> None:
        self._in_fit = False
        self.report()

    def on_exception(self) -> None:
        # torch.profiler records every operation of the process until it is stopped: a failed fit must not
        # leave it running. The unfinished trace window is dropped rather than exported while failing.
        profiler, self._torch_profiler = self._torch_profiler, None
        if profiler is not None:
            profiler.on_trace_ready = None
            profiler.__exit__(None, None, None)
        self._in_fit = False
        self._open.clear()

    # --- the report --------------------------------------------------------------------------------------
    def report(self, path: str | os.PathLike[str] | None = None) -> str:
        """Print the table of loop sections and callback hooks, write it to ``path`` (default: ``output``,
        see the class) atomically, and return it. Printed once per training run.

        Example::

            text = profiler.report("profile.txt")
        """
        text = self.table()
        target = Path(path) if path is not None else self._default_output()
        with atomic_open(target, "w") as file:
            file.write(text)
        if not self._reported:
            self._reported = True
            write_line(text.rstrip("\n"))
            write_line(f"Profiler: report written to {target}")
        return text

    def table(self) -> str:
        """The report as text: loop sections, then callback hooks, each sorted by total time."""
        run = time.perf_counter() - self._started if self._started is not None else 0.0
        start = "the fit's start" if self._fits else "the first hook seen"
        lines = [f"Profiler: {run:.3f} s from {start} to this report"]
        for title, every in (("Loop section", self.sections), ("Callback hook", self.hooks)):
            stats = {name: stat for name, stat in every.items() if stat.calls}  # cleared by a new fit
            if not stats:
                continue
            width = max(len(title), *(len(name) for name in stats))
            lines.append("")
            lines.append(
                f"{title:<{width}}  {'Calls':>7}  {'Total (s)':>10}  {'Mean (ms)':>10}  {'Max (ms)':>10}  {'% of run':>8}"
            )
            lines.append("-" * (width + 55))
            for name, stat in sorted(stats.items(), key=lambda item: item[1].total, reverse=True):
                mean = stat.total / stat.calls if stat.calls else 0.0
                share = 100.0 * stat.total / run if run > 0 else 0.0
                lines.append(
                    f"{name:<{width}}  {stat.calls:>7}  {stat.total:>10.4f}  {mean * 1000:>10.3f}  "
                    f"{stat.max * 1000:>10.3f}  {share:>7.1f}%"
                )
        if self.trace_path is not None:
            lines.append("")
            lines.append(f"torch.profiler trace: {self.trace_path}")
        return "\n".join(lines) + "\n"

    # --- internals ---------------------------------------------------------------------------------------
    def _reset(self) -> None:
        # A new fit is a new run; "% of run" of a second fit must not count the idle time since the first.
        self._stop_trace()
        for stat in self.hooks.values():
            stat.clear()  # in place: the timing wrappers hold these objects
        self.sections = {}
        self._open.clear()
        self._hook_seconds = 0.0
        self._started = None
        self.trace_path = None

    def _touch(self) -> None:
        if self._started is None:
            self._started = time.perf_counter()

    def _begin(self, section: str) -> None:
        if self.sync_cuda and torch.cuda.is_available():
            torch.cuda.synchronize()
        self._open[section] = (time.perf_counter(), self._hook_seconds)

    def _end(self, section: str) -> None:
        opened = self._open.pop(section, None)
        if opened is None:
            return
        if self.sync_cuda and torch.cuda.is_available():
            torch.cuda.synchronize()
        start, hooks_before = opened
        elapsed = time.perf_counter() - start - (self._hook_seconds - hooks_before)
        self.sections.setdefault(section, _Stat()).add(max(elapsed, 0.0))

    def _default_output(self) -> Path:
        if self.output is not None:
            return self.output
        # The Trainer passes its Fabric to every hook, so its loggers are the Fabric's.
        log_dir = None
        if self._fabric is not None and self._fabric.loggers:
            log_dir = getattr(self._fabric.loggers[0], "log_dir", None)
        return Path(log_dir or ".") / "profile.txt"

    def _start_trace(self) -> None:
        if not self.trace or self._torch_profiler is not None or self.trace_path is not None:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        schedule = torch.profiler.schedule(
            wait=self.trace_wait, warmup=self.trace_warmup, active=self.trace_active, repeat=1
        )
        self._torch_profiler = torch.profiler.profile(
            activities=activities,
            schedule=schedule,
            on_trace_ready=self._export_trace,
            record_shapes=self.record_shapes,
        )
        self._torch_profiler.__enter__()
        self._trace_steps = 0

    def _step_trace(self) -> None:
        if self.trace and self._torch_profiler is None and self.trace_path is None:
            self._start_trace()  # a loop that fires no on_train_batch_start: the window starts here
            return
        if self._torch_profiler is None:
            return
        self._torch_profiler.step()
        self._trace_steps += 1
        if self._trace_steps >= self.trace_wait + self.trace_warmup + self.trace_active:
            self._stop_trace()

    def _stop_trace(self) -> None:
        profiler, self._torch_profiler = self._torch_profiler, None
        if profiler is not None:
            profiler.__exit__(None, None, None)

    def _export_trace(self, profiler: Any) -> None:
        report = self._default_output()
        target = report.with_name("trace.json")
        # torch writes the trace to a path of its choosing, so it goes to a private folder first and is then
        # copied through atomic_open, which gives it a unique temporary name, fsync and an atomic rename.
        with tempfile.TemporaryDirectory(prefix="treadle-trace-") as folder:
            exported = os.path.join(folder, "trace.json")
            profiler.export_chrome_trace(exported)
            with open(exported, "rb") as source, atomic_open(target, "wb") as destination:
                shutil.copyfileobj(source, destination)
        self.trace_path = target
