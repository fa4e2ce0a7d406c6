"""Apple silicon GPUs through torch.mps."""

from __future__ import annotations

from typing import ClassVar

import torch

from treadle.accelerators.base import Accelerator


class MPSAccelerator(Accelerator):
    """The GPU of Apple silicon (one device)."""

    name: ClassVar[str] = "mps"
    device_type: ClassVar[str] = "mps"

    @staticmethod
    def is_available() -> bool:
        return torch.backends.mps.is_available()

    @staticmethod
    def device_count() -> int:
        return 1 if torch.backends.mps.is_available() else 0

    def get_device(self, index: int) -> torch.device:
        return torch.device("mps")

    def synchronize(self, device: torch.device) -> None:
        torch.mps.synchronize()
