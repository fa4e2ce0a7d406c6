"""What every accelerator provides: availability, device counting and device objects."""

from __future__ import annotations

from typing import ClassVar

import torch


class Accelerator:
    """A kind of hardware treadle runs on.

    Subclasses set ``name`` and ``device_type`` and override the methods whose defaults do not fit.
    """

    name: ClassVar[str] = ""
    device_type: ClassVar[str] = ""

    @staticmethod
    def is_available() -> bool:
        """Whether this machine has this kind of device and torch can use it."""
        raise NotImplementedError

    @staticmethod
    def device_count() -> int:
        """How many devices of this kind torch sees."""
        raise NotImplementedError

    def auto_device_count(self) -> int:
        """How many devices ``devices="auto"`` means."""
        return self.device_count()

    def get_device(self, index: int) -> torch.device:
        """The ``torch.device`` for device ``index``."""
        return torch.device(self.device_type, index)

    def setup_device(self, device: torch.device) -> None:
        """Make ``device`` the current one for this process (a no-op where there is no such notion)."""

    def synchronize(self, device: torch.device) -> None:
        """Wait for all queued work on ``device`` (used by timers that want wall-clock truth)."""

    def teardown(self) -> None:
        """Release what ``setup_device`` took."""
