"""The hang watchdog: when a job stops moving, name the rank that holds it up and show every rank's stack.

A rank stuck in Python (an endless loop, a deadlock, a data loader that never yields) leaves the others
waiting in their next collective until the process-group timeout, which then names nobody. Each rank runs
one watchdog thread that, every ``interval`` seconds, looks at its main thread's Python stack (no cost on
the training step: nothing in the loop is instrumented) and posts what it saw to the job's store:

- *moving*: the stack changed since the last look (a training loop always does), or rank 0 is doing work
  the others wait for (``run_on_rank_zero``: writing a checkpoint);
- *waiting*: the same stack for a while, innermost in torch.distributed or autograd (a collective, DDP's
  gradient all-reduce in backward, FSDP's all-gather);
- *stuck*: the same stack for a while, innermost anywhere else.

When a rank has waited longer than ``hang_timeout`` and no rank is moving, the job is hung: it would only
end at the process-group timeout. That rank writes the verdict (which ranks are stuck or silent, where
each is), every rank prints its Python stack to stderr, and every rank exits with code 1.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch

__all__ = ["HangWatchdog", "watch_interval"]

_PREFIX = "treadle/hang/"
# torch code a rank waits in when it waits for the other ranks.
_WAITING_DIRS = tuple(
    os.path.join(os.path.dirname(torch.__file__), part) + os.sep
    for part in ("distributed", os.path.join("nn", "parallel"), "autograd")
)
_EXIT_CODE = 1


def watch_interval(hang_timeout: float) -> float:
    """How often the watchdog looks: a tenth of the timeout, between 0.1 s and 5 s."""
    return min(max(hang_timeout / 10, 0.1), 5.0)


@dataclass
class _Look:
    state: str  # "moving", "waiting" or "stuck"
    still_for: float  # seconds the main thread's stack has not changed
    where: str  # innermost frame, "file:line in function"


class HangWatchdog:
    """One rank's watchdog thread; see the module docstring.

    Args:
        store: the job's ``torch.distributed`` store (shared by every rank).
        rank, world_size: this process's place in the job.
        hang_timeout: seconds a rank may wait while no rank moves before the job is ended.
    """

    def __init__(self, store: Any, rank: int, world_size: int, hang_timeout: float) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.hang_timeout = hang_timeout
        self.interval = watch_interval(hang_timeout)
        self._main = threading.main_thread().ident or 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="treadle-hang-watchdog", daemon=True)
        self._signature: tuple[Any, ...] | None = None
        self._changed_at = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self._tick()
            except Exception:
                return  # the store went away (the job is ending): nothing left to watch

    def _tick(self) -> None:
        if self.store.check([_PREFIX + "verdict"]):
            self._dump_and_exit(verdict=None)
        look = self._look()
        self.store.set(
            f"{_PREFIX}rank{self.rank}",
            f"{os.getpid()}|{look.state}|{look.still_for:.1f}|{time.time():.1f}|{look.where}",
        )
        if look.state == "waiting" and look.still_for > self.hang_timeout:
            verdict = self._verdict(look)
            if verdict is not None:
                self._dump_and_exit(verdict)

    def _look(self) -> _Look:
        frame = sys._current_frames().get(self._main)  # the only way to see another thread
        if frame is None:
            return _Look("moving", 0.0, "?")
        signature, innermost, for_the_job = _stack_signature(frame)
        now = time.monotonic()
        if signature != self._signature:
            self._signature, self._changed_at = signature, now
        still_for = now - self._changed_at
        where = f"{innermost.f_code.co_filename}:{innermost.f_lineno} in {innermost.f_code.co_name}"
        if for_the_job or still_for < self.interval * 1.5:
            return _Look("moving", still_for, where)
        waiting = innermost.f_code.co_filename.startswith(_WAITING_DIRS)
        return _Look("waiting" if waiting else "stuck", still_for, where)

    def _verdict(self, mine: _Look) -> str | None:
        """The message naming who holds the job up, or None while some rank still moves."""
        stuck, silent, waiting = [], [], [f"rank {self.rank} (pid {os.getpid()}) at {mine.where}"]
        now = time.time()
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            key = f"{_PREFIX}rank{rank}"
            if not self.store.check([key]):
                silent.append(f"rank {rank} (never reported)")
                continue
            pid, state, still_for, posted, where = self.store.get(key).decode().split("|", 4)
            if now - float(posted) > 3 * self.interval + 2:
                silent.append(f"rank {rank} (pid {pid}; silent for {now - float(posted):.0f} s, last at {where})")
            elif state == "moving":
                return None
            elif state == "stuck":
                stuck.append(f"rank {rank} (pid {pid}) at {where}, unchanged for {float(still_for):.0f} s")
            else:
                waiting.append(f"rank {rank} (pid {pid}) at {where}")
        lines = [
            f"treadle: the job is hung: rank {self.rank} has waited {mine.still_for:.0f} s for the other ranks "
            f"(hang_timeout={self.hang_timeout:g} s) and no rank is making progress."
        ]
        if stuck:
            lines.append("Stuck outside any collective (they never reached the one the others wait in):")
            lines += [f"  {line}" for line in stuck]
        if silent:
            lines.append("Not reporting (stuck in C code that holds the GIL, stopped, or gone):")
            lines += [f"  {line}" for line in silent]
        lines.append("Waiting in torch.distributed or autograd:")
        lines += [f"  {line}" for line in waiting]
        if not stuck and not silent:
            lines.append("Every rank waits: they are in different collectives, or one is stuck inside torch.")
        lines.append("Each rank's Python stack follows; the job ends with exit code 1.")
        return "\n".join(lines)

    def _dump_and_exit(self, verdict: str | None) -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if verdict is not None:
            self.store.set(_PREFIX + "verdict", verdict)
            print(verdict, file=sys.stderr, flush=True)
        print(self._stacks(), file=sys.stderr, flush=True)
        # Every rank prints its stack before any exits: the first exit makes the others' collectives fail
        # (and a launcher stop them), which would cut their stacks off.
        deadline = time.monotonic() + 2 * self.interval + 2
        with contextlib.suppress(Exception):
            self.store.add(_PREFIX + "dumped", 1)
            if verdict is not None:
                while self.store.add(_PREFIX + "dumped", 0) < self.world_size and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.store.set(_PREFIX + "exit", "1")
            else:
                while not self.store.check([_PREFIX + "exit"]) and time.monotonic() < deadline:
                    time.sleep(0.02)
        os._exit(_EXIT_CODE)

    def _stacks(self) -> str:
        """This rank's main thread's stack, and those of threads other than treadle's, as tracebacks."""
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        parts = [f"treadle: stack of rank {self.rank} (pid {os.getpid()}) at the hang, most recent call last:"]
        for ident, frame in sys._current_frames().items():
            name = names.get(ident, "?")
            if ident != self._main and (name.startswith("treadle-") or ident == threading.get_ident()):
                continue
            title = "main thread" if ident == self._main else f"thread {name!r}"
            parts.append(f"  [rank {self.rank}, {title}]")
            parts.append("".join(traceback.format_stack(frame)).rstrip())
        return "\n".join(parts)


def _stack_signature(frame: FrameType) -> tuple[tuple[Any, ...], FrameType, bool]:
    """The main thread's stack as (code, line) pairs, its innermost frame, and whether it runs
    ``run_on_rank_zero`` (work the other ranks knowingly wait for)."""
    innermost = frame
    # The innermost frame's line is left out: a rank spinning in `while not ready: ...` changes line all
    # the time without getting anywhere. A loop that makes progress goes in and out of calls instead.
    pairs: list[tuple[int, int]] = [(id(frame.f_code), 0)]
    for_the_job = frame.f_code.co_name == "run_on_rank_zero"
    current: FrameType | None = frame.f_back
    while current is not None:
        pairs.append((id(current.f_code), current.f_lineno))
        for_the_job = for_the_job or current.f_code.co_name == "run_on_rank_zero"
        current = current.f_back
    return tuple(pairs), innermost, for_the_job
