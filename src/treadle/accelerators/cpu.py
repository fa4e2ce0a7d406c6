"""The CPU: always there; ``devices=N`` means N processes."""

from __future__ import annotations

import os
from typing import ClassVar

import torch

from treadle.accelerators.base import Accelerator


class CPUAccelerator(Accelerator):
    """The CPU. ``devices=N`` runs N processes, each on the CPU."""

    name: ClassVar[str] = "cpu"
    device_type: ClassVar[str] = "cpu"

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return os.cpu_count() or 1

    def auto_device_count(self) -> int:
        # One process by default: several CPU "devices" only make sense as an explicit request for DDP.
        return 1

    def get_device(self, index: int) -> torch.device:
        return torch.device("cpu")
