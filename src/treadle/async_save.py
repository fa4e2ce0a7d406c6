"""Checkpoints written in the background: training waits only for the copy of the state, not for the disk.

``fabric.save(path, state, async_save=True)`` copies every tensor off the training tensors (into host
memory, pinned when they live on a GPU), starts a thread that writes the copy with the same atomic rename as
a normal save, and returns. One write is in flight at a time: the next save, ``fabric.wait_for_saves()``
and the end of the process wait for it, and the first of them raises its error, if it had one. The file at
``path`` is always either the previous checkpoint or the complete new one.
"""

from __future__ import annotations

import atexit
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

from treadle.errors import add_note


def host_copy(tree: Any) -> Any:
    """``tree`` with every tensor replaced by a copy in host memory that training cannot change.

    Tensors on an accelerator are copied into pinned memory without blocking, then waited for once; CPU
    tensors are cloned. Containers are rebuilt; other values are kept (they are not changed in place by
    training, and the caller already turned objects into state dicts).
    """
    devices: set[torch.device] = set()

    def copy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.device.type == "cpu":
                return value.clone()
            devices.add(value.device)
            pinned = torch.empty_like(value, device="cpu", pin_memory=value.device.type == "cuda")
            return pinned.copy_(value, non_blocking=True)
        if isinstance(value, dict):
            return type(value)((key, copy(item)) for key, item in value.items())
        if isinstance(value, list):
            return [copy(item) for item in value]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(copy(item) for item in value)
        return value

    copied = copy(tree)
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the non-blocking copies must land before the thread reads them
    return copied


class BackgroundWriter:
    """Runs one write at a time in a thread and keeps its error for whoever waits next.

    Example::

        writer = BackgroundWriter()
        writer.submit(lambda: checkpoint.atomic_save(copy, "last.pt"), "last.pt")
        ...
        writer.wait()  # raises the write's error, if any
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._what = ""
        self._then: list[Callable[[], object]] = []
        self._thread_done = True
        self._lock = threading.Lock()
        # Threads are joined before atexit runs; what is left then is to report an error nobody waited for.
        atexit.register(_report_at_exit, weakref.ref(self))

    def submit(self, write: Callable[[], object], what: str) -> None:
        """Wait for the previous write (raising its error), then start ``write`` in a thread.

        Args:
            write: the work, e.g. writing a host copy of the state to its file.
            what: the file, for the error message.
        """
        self.wait()
        self._what = what

        def run() -> None:
            try:
                write()
                while True:
                    with self._lock:
                        if not self._then:
                            return
                        follow_up = self._then.pop(0)
                    follow_up()
            except BaseException as error:  # kept for wait(): a thread's exception would be lost
                self._error = error
            finally:
                with self._lock:
                    self._thread_done = True
                    self._then.clear()  # after a failed write they must not run

        self._thread_done = False
        # Not a daemon: the interpreter waits for a write in flight before it exits.
        self._thread = threading.Thread(target=run, name=f"treadle-save {what}", daemon=False)
        self._thread.start()

    def then(self, follow_up: Callable[[], object]) -> None:
        """Run ``follow_up`` in the writing thread once the write in flight has succeeded (never if it
        fails); with no write in flight, run it now."""
        with self._lock:
            if self._thread is not None and not self._thread_done:
                self._then.append(follow_up)
                return
        if self._error is None:
            follow_up()

    def wait(self) -> None:
        """Block until the write in flight is done; raise its error once, naming the file."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            add_note(error, f"(while writing the checkpoint {self._what!r} in the background)")
            raise error

    def _report_at_exit(self) -> None:
        try:
            self.wait()
        except BaseException as error:
            print(
                f"treadle: the background save of {self._what!r} failed: {type(error).__name__}: {error}. "
                "The file there is the previous checkpoint, if there was one.",
                file=sys.stderr,
            )


def _report_at_exit(reference: weakref.ref[BackgroundWriter]) -> None:
    writer = reference()
    if writer is not None:
        writer._report_at_exit()
