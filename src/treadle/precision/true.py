"""True precisions: parameters, inputs and outputs all in one dtype (64, 32, 16 or bf16)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from treadle.precision.base import Precision
from treadle.tree import map_tensors

_NAMES = {torch.float64: "64-true", torch.float16: "16-true", torch.bfloat16: "bf16-true"}


class TruePrecision(Precision):
    """Everything in ``dtype``: the module is cast at setup, floating inputs are cast at each forward, and
    ``dtype`` is torch's default dtype while forward runs (and inside ``fabric.autocast()``).

    Args:
        dtype: ``torch.float64``, ``torch.float16`` or ``torch.bfloat16`` (``"32-true"`` is the base
            ``Precision``, which casts nothing).

    Raises:
        ValueError: another dtype.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        if dtype not in _NAMES:
            raise ValueError(
                f"TruePrecision(dtype={dtype}) is not supported. Use one of: {', '.join(map(str, _NAMES))}; "
                "for float32 use Precision()."
            )
        self.dtype = dtype
        self.name = _NAMES[dtype]  # type: ignore[misc]  # per-instance: one class serves three dtypes

    def convert_module(self, module: nn.Module) -> nn.Module:
        # Not `module.to(dtype)`: that casts complex tensors to the real dtype too, dropping their imaginary
        # part. Real tensors take `dtype`; complex ones become complex128 under float64 and otherwise stay as
        # they are (there is no complex bfloat16, and torch's complex32 supports few operations).
        converted: nn.Module = module._apply(self._cast_state)  # type: ignore[no-untyped-call]
        return converted

    def _cast_state(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return tensor.to(self.dtype)
        if tensor.is_complex() and self.dtype == torch.float64:
            return tensor.to(torch.complex128)
        return tensor

    @contextlib.contextmanager
    def module_init_context(self) -> Iterator[None]:
        with self.tensor_init_context():
            yield

    @contextlib.contextmanager
    def tensor_init_context(self) -> Iterator[None]:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        # Tensors the forward creates itself (masks, positional encodings, torch.zeros(n)) follow the default
        # dtype; left at float32 they would meet bf16 weights and fail. Restored when forward returns, so the
        # loss and everything outside the model stay in float32.
        return self.tensor_init_context()

    def convert_input(self, data: Any) -> Any:
        return map_tensors(data, self._cast_state)

    def convert_output(self, data: Any) -> Any:
        # Outputs leave the model in the default dtype (float32), as Lightning Fabric does, so a ported loop
        # computes its loss in the same precision it did there.
        default = torch.get_default_dtype()
        return map_tensors(data, lambda t: t.to(default) if torch.is_floating_point(t) else t)
