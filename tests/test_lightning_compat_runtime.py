"""Behaviours a script ported from Lightning Fabric relies on (issue 10), through treadle's public API."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from treadle import Fabric


class WithComplex(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.real = nn.Parameter(torch.ones(2))
        self.phase = nn.Parameter(torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64))
        self.register_buffer("filter", torch.tensor([0.5 + 0.25j], dtype=torch.complex64))
        self.register_buffer("index", torch.tensor([3]))


@pytest.mark.parametrize(
    ("precision", "real", "complex_"),
    [
        ("64-true", torch.float64, torch.complex128),
        ("32-true", torch.float32, torch.complex64),
        ("bf16-true", torch.bfloat16, torch.complex64),
    ],
)
def test_true_precisions_keep_complex_tensors_complex(
    precision: Any, real: torch.dtype, complex_: torch.dtype
) -> None:
    model = Fabric(accelerator="cpu", precision=precision).setup(WithComplex())
    assert model.real.dtype == real
    assert model.phase.dtype == complex_ and model.filter.dtype == complex_
    assert model.index.dtype == torch.long
    # The imaginary parts survive the cast.
    assert torch.equal(
        model.phase.detach().to(torch.complex128), torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex128)
    )
    assert model.filter.imag.item() == 0.25
