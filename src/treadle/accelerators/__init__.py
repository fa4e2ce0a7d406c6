"""Accelerators and the parsing of ``accelerator=`` and ``devices=``."""

from __future__ import annotations

from collections.abc import Sequence

from treadle.accelerators.base import Accelerator
from treadle.accelerators.cpu import CPUAccelerator
from treadle.accelerators.cuda import CUDAAccelerator
from treadle.accelerators.mps import MPSAccelerator

ACCELERATORS: dict[str, type[Accelerator]] = {
    "cpu": CPUAccelerator,
    "cuda": CUDAAccelerator,
    "mps": MPSAccelerator,
}
# What `accelerator=` (and `treadle run --accelerator`) accepts as a string.
ACCELERATOR_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "gpu", "mps")

__all__ = [
    "ACCELERATORS",
    "ACCELERATOR_CHOICES",
    "Accelerator",
    "CPUAccelerator",
    "CUDAAccelerator",
    "MPSAccelerator",
    "parse_accelerator",
    "parse_devices",
]


def parse_accelerator(accelerator: str | Accelerator) -> Accelerator:
    """Turn ``Fabric(accelerator=...)`` into an Accelerator, checking that the hardware is there."""
    if isinstance(accelerator, Accelerator):
        return accelerator
    if not isinstance(accelerator, str) or accelerator.lower() not in ACCELERATOR_CHOICES:
        raise ValueError(
            f"Fabric(accelerator={accelerator!r}) is not an accelerator. "
            f"Choose one of: {', '.join(map(repr, ACCELERATOR_CHOICES))}, or pass an Accelerator instance."
        )
    name = accelerator.lower()
    if name == "auto":
        for candidate in (CUDAAccelerator, MPSAccelerator):
            if candidate.is_available():
                return candidate()
        return CPUAccelerator()
    if name == "gpu":
        for candidate in (CUDAAccelerator, MPSAccelerator):
            if candidate.is_available():
                return candidate()
        raise RuntimeError(
            "Fabric(accelerator='gpu') found no GPU: torch sees neither CUDA nor MPS. "
            "Use accelerator='cpu', or install a CUDA build of torch on a machine with a GPU."
        )
    chosen = ACCELERATORS[name]
    if not chosen.is_available():
        raise RuntimeError(
            f"Fabric(accelerator={accelerator!r}) is not available on this machine "
            f"(torch {_torch_version()} sees no {name} device). Use accelerator='auto' to take what is here."
        )
    return chosen()


def parse_devices(
    devices: int | str | Sequence[int], accelerator: Accelerator, *, argument: str | None = None
) -> list[int]:
    """Turn ``Fabric(devices=...)`` into a list of device indices on ``accelerator``.

    Accepts a positive int (the first N devices), ``-1`` (all), ``"auto"``, a list of indices, or the same as
    strings (``"2"``, ``"0,1"``, ``"-1"``).

    Args:
        devices: the selection, as the user gave it.
        accelerator: the devices' kind; GPUs are checked against what torch sees.
        argument: how errors name the value, e.g. ``"--devices '8'"``; default ``"Fabric(devices=...)"``.

    Returns:
        The indices of the devices to use, one per process on this machine.

    Raises:
        ValueError: ``devices`` is not a selection, or names devices this machine does not have.

    Example::

        assert parse_devices("0,1", CPUAccelerator()) == [0, 1]
    """
    where = f"Fabric(devices={devices!r})" if argument is None else argument
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return list(range(max(accelerator.auto_device_count(), 1)))
        try:
            if "," in text:
                devices = [int(part) for part in text.split(",") if part.strip()]
            else:
                devices = int(text)
        except ValueError:
            raise ValueError(_devices_error(where)) from None
    if isinstance(devices, bool):
        raise ValueError(_devices_error(where))
    available = accelerator.device_count()
    if isinstance(devices, int):
        if devices == -1:
            return list(range(available))
        if devices < 1:
            raise ValueError(f"{where} must be at least 1 device, or -1 for all of them.")
        if accelerator.name != "cpu" and devices > available:
            raise ValueError(
                f"{where} asks for {devices} {accelerator.name} devices, but only {available} are visible. "
                "Ask for fewer, or use -1 for all of them."
            )
        return list(range(devices))
    if (
        isinstance(devices, Sequence)
        and devices
        and all(isinstance(i, int) and not isinstance(i, bool) for i in devices)
    ):
        indices = [int(i) for i in devices]
        if len(set(indices)) != len(indices):
            raise ValueError(f"{where} lists a device twice. List each index once.")
        if accelerator.name == "cpu":
            # CPU indices carry no identity; a list only says how many processes to run.
            return list(range(len(indices)))
        bad = [i for i in indices if not 0 <= i < available]
        if bad:
            raise ValueError(
                f"{where} names {accelerator.name} device(s) {bad}, but the visible "
                f"indices are 0..{available - 1}. Pick indices from that range."
            )
        return indices
    raise ValueError(_devices_error(where))


def _devices_error(where: str) -> str:
    return (
        f"{where} must be a number of devices (a positive int), -1 (all), 'auto', or a list of device "
        "indices such as [0, 1]."
    )


def _torch_version() -> str:
    import torch

    return torch.__version__
