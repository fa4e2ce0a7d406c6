"""NVIDIA (and ROCm) GPUs through torch.cuda."""

from __future__ import annotations

from typing import ClassVar

import torch

from treadle.accelerators.base import Accelerator


class CUDAAccelerator(Accelerator):
    """NVIDIA (or ROCm) GPUs; each process binds to its own device with ``torch.cuda.set_device``."""

    name: ClassVar[str] = "cuda"
    device_type: ClassVar[str] = "cuda"

    @staticmethod
    def is_available() -> bool:
        return torch.cuda.is_available()

    @staticmethod
    def device_count() -> int:
        return torch.cuda.device_count()

    def setup_device(self, device: torch.device) -> None:
        # Without this, collectives and new tensors of rank N land on cuda:0.
        torch.cuda.set_device(device)

    def synchronize(self, device: torch.device) -> None:
        torch.cuda.synchronize(device)

    def teardown(self) -> None:
        torch.cuda.empty_cache()
