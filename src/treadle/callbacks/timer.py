"""IterationTimer: how long each training iteration takes, without slowing the loop down to find out."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from treadle.callbacks.arguments import check_bool
from treadle.callbacks.hooks import Callback
from treadle.callbacks.progress import write_line

__all__ = ["IterationTimer", "TimingSummary"]

# Events waiting to be read are drained without blocking once this many pile up, so a large
# every_n_steps cannot grow the queue without bound.
_MAX_PENDING = 1024


@dataclass(frozen=True)
class TimingSummary:
    """Statistics of the iteration times measured so far, in seconds.

    Attributes:
        count: how many iterations were timed.
        mean, median, p90: of the iteration times (NaN when nothing was timed).
        total: the sum of the iteration times.
    """

    count: int
    mean: float
    median: float
    p90: float
    total: float

    def __str__(self) -> str:
        if self.count == 0:
            return "no iterations timed"
        return (
            f"{self.count} iterations, mean {_ms(self.mean)}, median {_ms(self.median)}, "
            f"p90 {_ms(self.p90)} ({1.0 / self.mean:.2f} it/s)"
        )


class IterationTimer(Callback):
    """Prints how long each training iteration takes, and a summary (mean, median, p90) at the end.

    An iteration is measured from the end of the previous batch (``on_train_batch_end``) to the end of
    this one, so it includes data loading and everything else the loop does per batch. After a break in
    training (a new epoch, a validation run) the next iteration starts at ``on_train_batch_start`` when
    the loop fires it, and is otherwise left out.

    On CUDA, boundaries are CUDA events recorded on the current stream, and they are read only when a
    line is due, without waiting: a line appears as soon as its iteration has finished on the GPU, often a
    batch or two later. So the timer adds no host-device synchronisation to the loop, and its figures are
    GPU-timeline times, which match a synchronised measurement. On other devices it reads the host clock.
    Pass ``sync=True`` to synchronise the device at every boundary instead (slower; exact host times).

    Printing happens on global rank 0 only. In a Fabric-only loop, fire ``on_train_batch_end`` after each
    batch and call ``summary()`` (or fire ``on_train_end``) at the end; in the Trainer nothing is needed.

    Each ``on_fit_start`` (every ``Trainer.fit``) starts afresh: the iteration count, the times and the
    summary cover that fit only. A Fabric-only loop that fires no ``on_fit_start`` keeps accumulating
    across its runs.

    Args:
        every_n_steps: print a line every this many iterations (batches); 0 prints only the summary.
        sync: synchronise the device at each boundary and use the host clock (for comparison runs).
        device: the device to time; default ``fabric.device`` (from ``on_after_setup``), else the loss's.
        file: where to print; default ``sys.stdout`` as it is when printing.

    Raises:
        ValueError: ``every_n_steps`` is negative or not an int, or ``device`` is not a torch device.
        TypeError: ``sync`` is not a bool.

    Example::

        timer = IterationTimer(every_n_steps=50)
        fabric = Fabric(callbacks=[timer])
        model, optimizer = fabric.setup(model, optimizer)
        for batch in loader:
            loss = model(batch).mean()
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            fabric.call("on_train_batch_end", loss=loss)
        print(timer.summary())  # 500 iterations, mean 15.2 ms, median 15.1 ms, p90 15.4 ms (65.8 it/s)
    """

    rank_zero_only = True

    def __init__(
        self,
        every_n_steps: int = 1,
        sync: bool = False,
        device: torch.device | str | None = None,
        file: TextIO | None = None,
    ) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise ValueError(
                f"IterationTimer(every_n_steps={every_n_steps!r}) must be a non-negative int (0 prints only "
                "the summary), e.g. every_n_steps=50."
            )
        self.every_n_steps = every_n_steps
        self.sync = check_bool("IterationTimer", "sync", sync)
        self._device = None if device is None else _parse_device(device)
        self._file = file
        self._durations: list[float] = []
        self._iterations = 0  # batch ends seen
        self._window_start = 0  # len(self._durations) at the last printed line
        self._clock: _Clock | None = None
        self._anchor: Any = None  # the boundary the next iteration is measured from
        self._summary_printed = False

    # --- hooks -------------------------------------------------------------------------------------------
    def on_after_setup(self, fabric: Any = None) -> None:
        if self._device is None and fabric is not None:
            self._device = fabric.device

    def on_fit_start(self) -> None:
        # A second fit by the same Trainer is a new run: its summary must not include the first's iterations.
        self._durations = []
        self._iterations = 0
        self._window_start = 0
        self._clock = None  # with the events of the previous fit still waiting to be read
        self._anchor = None
        self._summary_printed = False

    def on_train_start(self) -> None:
        self._summary_printed = False

    def on_train_epoch_start(self) -> None:
        self._anchor = None

    def on_validation_start(self) -> None:
        self._anchor = None

    def on_train_batch_start(self, fabric: Any = None) -> None:
        if self._anchor is None:
            self._anchor = self._clock_for(None, fabric).mark()

    def on_train_batch_end(self, loss: Any = None, fabric: Any = None) -> None:
        clock = self._clock_for(loss, fabric)
        end = clock.mark()
        self._iterations += 1
        if self._anchor is not None:
            clock.add(self._iterations, self._anchor, end)
        self._anchor = end
        if self.every_n_steps and self._iterations % self.every_n_steps == 0:
            clock.due = self._iterations
        if clock.due or clock.pending_count > _MAX_PENDING:
            self._collect(block=False)

    def on_train_end(self) -> None:
        self._print_summary()

    def on_fit_end(self) -> None:
        self._print_summary()

    # --- results -----------------------------------------------------------------------------------------
    @property
    def durations(self) -> list[float]:
        """Every iteration time measured so far, in seconds (waits for the device to finish them)."""
        self._collect(block=True)
        return list(self._durations)

    def summary(self) -> TimingSummary:
        """Mean, median and p90 of the iteration times so far; waits for the device to finish them.

        Example::

            print(timer.summary().median)  # seconds
        """
        self._collect(block=True)
        return _summarise(self._durations)

    # --- internals ---------------------------------------------------------------------------------------
    def _clock_for(self, loss: Any, fabric: Any) -> _Clock:
        if self._clock is None:
            device = self._device
            if device is None and fabric is not None:
                device = fabric.device
            if device is None and isinstance(loss, torch.Tensor):
                device = loss.device
            if device is None and torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
                device = torch.device("cuda", torch.cuda.current_device())
            device = device if device is not None else torch.device("cpu")
            self._clock = (
                _EventClock(device)
                if device.type == "cuda" and not self.sync
                else _HostClock(device, self.sync)
            )
        return self._clock

    def _collect(self, block: bool) -> None:
        if self._clock is None:
            return
        for iteration, seconds in self._clock.read(block):
            self._durations.append(seconds)
            if self.every_n_steps and iteration % self.every_n_steps == 0:
                self._print_line(iteration, seconds)

    def _print_line(self, iteration: int, seconds: float) -> None:
        line = f"iteration {iteration}: {_ms(seconds)}"
        window = self._durations[self._window_start :]
        if len(window) > 1:
            mean = sum(window) / len(window)
            line += f" (last {len(window)}: mean {_ms(mean)}, {1.0 / mean:.2f} it/s)"
        self._window_start = len(self._durations)
        self._print(line)

    def _print_summary(self) -> None:
        if self._summary_printed:
            return
        self._summary_printed = True
        self._print(f"IterationTimer: {self.summary()}")

    def _print(self, line: str) -> None:
        write_line(line, self._file)


class _Clock:
    """Marks iteration boundaries and turns pairs of them into durations."""

    def __init__(self) -> None:
        self.due = 0  # the latest iteration whose line is waiting to be printed (0: none)
        self._pending: deque[tuple[int, Any, Any]] = deque()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def mark(self) -> Any:
        raise NotImplementedError

    def add(self, iteration: int, start: Any, end: Any) -> None:
        self._pending.append((iteration, start, end))

    def read(self, block: bool) -> list[tuple[int, float]]:
        """Durations of the pending iterations that have finished (all of them when ``block``)."""
        done = []
        while self._pending:
            iteration, start, end = self._pending[0]
            if not self._finished(end, block):
                break
            self._pending.popleft()
            done.append((iteration, self._seconds(start, end)))
            self._release(start)
        if self.due and (not self._pending or self._pending[0][0] > self.due):
            self.due = 0
        return done

    def _finished(self, end: Any, block: bool) -> bool:
        return True

    def _seconds(self, start: Any, end: Any) -> float:
        return float(end - start)

    def _release(self, start: Any) -> None:
        pass


class _HostClock(_Clock):
    def __init__(self, device: torch.device, sync: bool) -> None:
        super().__init__()
        self._device = device
        self._sync = sync and device.type == "cuda"

    def mark(self) -> float:
        if self._sync:
            torch.cuda.synchronize(self._device)
        return time.perf_counter()


class _EventClock(_Clock):
    """CUDA events: recorded on the stream at each boundary, read when they have completed."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self._device = device
        self._free: list[torch.cuda.Event] = []

    def mark(self) -> torch.cuda.Event:
        event = self._free.pop() if self._free else torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        event.record(torch.cuda.current_stream(self._device))
        return event

    def _finished(self, end: Any, block: bool) -> bool:
        if block:
            end.synchronize()
            return True
        return bool(end.query())  # non-blocking: has the GPU passed this point yet?

    def _seconds(self, start: Any, end: Any) -> float:
        return float(start.elapsed_time(end)) / 1000.0

    def _release(self, start: Any) -> None:
        # The start of a read iteration is never used again (the end is the next iteration's start).
        self._free.append(start)


def _summarise(durations: list[float]) -> TimingSummary:
    if not durations:
        nan = math.nan
        return TimingSummary(0, nan, nan, nan, 0.0)
    ordered = sorted(durations)
    total = sum(ordered)
    return TimingSummary(
        len(ordered), total / len(ordered), _quantile(ordered, 0.5), _quantile(ordered, 0.9), total
    )


def _quantile(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _parse_device(device: torch.device | str) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"IterationTimer(device={device!r}) is not a torch device. Pass e.g. device='cuda', 'cuda:0', 'cpu' "
            "or 'mps', or leave it None to time fabric.device."
        ) from None
