"""Precisions and the parsing of ``precision=``: one name -> factory table, aliases resolved first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

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
    "16-mixed": lambda device_type: MixedPrecision(torch.float16, device_type),
    "bf16-mixed": lambda device_type: MixedPrecision(torch.bfloat16, device_type),
}

__all__ = ["PRECISIONS", "MixedPrecision", "Precision", "PrecisionInput", "TruePrecision", "parse_precision"]


def parse_precision(precision: object, device_type: str) -> Precision:
    """Turn ``Fabric(precision=...)`` into a Precision object for ``device_type``."""
    if isinstance(precision, Precision):
        return precision
    if precision is None:
        precision = "32-true"
    # Only exact strs and ints are names: bools, floats (16.0 == 16) and unhashable values are rejected.
    name = _ALIASES.get(precision, precision) if type(precision) in (str, int) else None
    if not isinstance(name, str) or name not in PRECISIONS:
        choices = ", ".join(repr(key) for key in [*PRECISIONS, *_ALIASES])
        raise ValueError(
            f"Fabric(precision={precision!r}) is not a precision. Choose one of: {choices}, "
            "or pass a Precision instance."
        )
    return PRECISIONS[name](device_type)
