"""SIGTERM as a request to stop: the handler only sets a flag, and the loop acts on it at a step boundary.

Clusters send SIGTERM some seconds before they kill a preempted job. Saving from inside the signal handler
would interrupt an optimizer step halfway (and, with several processes, only on the rank that got the
signal), so the Trainer checks the flag where the state is consistent, agrees on it across ranks, saves
``last.ckpt`` and returns from ``fit``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["PreemptionFlag"]


class PreemptionFlag:
    """Set when SIGTERM arrives while ``watch()`` is active.

    Example::

        flag = PreemptionFlag()
        with flag.watch():
            ...  # a loop that checks flag.received at its step boundaries
    """

    def __init__(self) -> None:
        self.received = False

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Install the SIGTERM handler for the duration of the block, then put the previous one back.

        Signal handlers can only be installed from the main thread; elsewhere this does nothing and
        SIGTERM keeps its previous behaviour.
        """
        self.received = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> Any:
        self.received = True
