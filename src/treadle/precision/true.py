"""True precisions: parameters, inputs and outputs all in one dtype (64, 32, 16 or bf16)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from treadle.precision.base import Precision
from treadle.tree import map_tensors


class TruePrecision(Precision):
    """Everything in ``dtype``: the module is cast at setup, floating inputs are cast at each forward."""

    def __init__(self, dtype: torch.dtype, name: str) -> None:
        self.dtype = dtype
        self.name = name  # type: ignore[misc]  # per-instance: one class serves all four dtypes

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(dtype=self.dtype) if self.dtype != torch.float32 else module

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

    def convert_input(self, data: Any) -> Any:
        if self.dtype == torch.float32:
            return data
        return map_tensors(data, self._cast)

    def convert_output(self, data: Any) -> Any:
        # Outputs leave the model in the default dtype (float32), as Lightning Fabric does, so a ported loop
        # computes its loss in the same precision it did there.
        default = torch.get_default_dtype()
        return map_tensors(data, lambda t: t.to(default) if torch.is_floating_point(t) else t)

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.dtype) if torch.is_floating_point(tensor) else tensor
