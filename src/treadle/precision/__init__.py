"""Precisions and the parsing of ``precision=``: one name -> factory table, aliases resolved first."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch

from treadle.errors import caller_stacklevel
from treadle.precision.amp import MixedPrecision
from treadle.precision.base import Precision
from treadle.precision.true import TruePrecision

PrecisionName = Literal["64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed"]
PrecisionInput = PrecisionName | Literal["64", "32", "16", "bf16", 64, 32, 16] | Precision

_ALIASES: dict[object, str] = {
    "64": "64-true",
    64: "64-true",
    "32": "32-true",
    32: "32-true",
    "16": "16-mixed",
    16: "16-mixed",
    "bf16": "bf16-mixed",
}

# Each factory takes the accelerator's device type (autocast and the grad scaler need it).
PRECISIONS: dict[str, Callable[[str], Precision]] = {
    "64-true": lambda device_type: TruePrecision(torch.float64),
    "32-true": lambda device_type: Precision(),
    "16-true": lambda device_type: TruePrecision(torch.float16),
    "bf16-true": lambda device_type: TruePrecision(torch.bfloat16),
    "16-mixed": lambda device_type: MixedPrecision(
        torch.bfloat16 if device_type == "cpu" else torch.float16, device_type
    ),
    "bf16-mixed": lambda device_type: MixedPrecision(torch.bfloat16, device_type),
}

__all__ = [
    "PRECISIONS",
    "MixedPrecision",
    "Precision",
    "PrecisionInput",
    "TruePrecision",
    "parse_precision",
    "precision_name",
]


def precision_name(precision: object) -> str:
    """The canonical name of a precision written by name or alias (``"bf16"`` -> ``"bf16-mixed"``)."""
    if precision is None:
        return "32-true"
    # Only exact strs and ints are names: bools, floats (16.0 == 16) and unhashable values are rejected.
    name = _ALIASES.get(precision, precision) if type(precision) in (str, int) else None
    if not isinstance(name, str) or name not in PRECISIONS:
        choices = ", ".join(repr(key) for key in [*PRECISIONS, *_ALIASES])
        raise ValueError(
            f"Fabric(precision={precision!r}) is not a precision. Choose one of: {choices}, "
            "or pass a Precision instance."
        )
    return name


def parse_precision(precision: object, device_type: str) -> Precision:
    """Turn ``Fabric(precision=...)`` into a Precision object for ``device_type``."""
    if isinstance(precision, Precision):
        return precision
    name = precision_name(precision)
    if name == "16-mixed" and device_type == "cpu":
        # As in Lightning Fabric: CPU autocast is for bfloat16; float16 there is slow and needs a grad scaler
        # for nothing. MixedPrecision(torch.float16, "cpu") still gives float16 to those who want it.
        warnings.warn(
            f"Fabric(precision={precision!r}) on CPU means 'bf16-mixed' (as in Lightning Fabric): float16 "
            "autocast is for GPUs. Pass precision='bf16-mixed' to silence this, or "
            "precision=MixedPrecision(torch.float16, 'cpu') for float16 on CPU.",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
    return PRECISIONS[name](device_type)
