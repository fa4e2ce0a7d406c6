from __future__ import annotations

import pytest
import torch
from torch import nn

from treadle.precision import MixedPrecision, Precision, TruePrecision, parse_precision


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("32-true", "32-true"),
        ("32", "32-true"),
        (32, "32-true"),
        (None, "32-true"),
        ("64", "64-true"),
        (64, "64-true"),
        ("bf16", "bf16-mixed"),
        ("bf16-true", "bf16-true"),
        ("16-true", "16-true"),
    ],
)
def test_names_and_aliases(value: object, name: str) -> None:
    assert parse_precision(value, "cpu").name == name


@pytest.mark.parametrize("value", ["fp16", "bf16-mixd", 8, True])
def test_bad_precision_lists_choices(value: object) -> None:
    with pytest.raises(ValueError, match=r"is not a precision. Choose one of: '64-true', '32-true'"):
        parse_precision(value, "cpu")


@pytest.mark.parametrize("value", ["16-mixed", "16", 16])
def test_16_mixed_on_cpu_is_bf16_mixed_with_a_warning(value: object) -> None:
    # As in Lightning Fabric: float16 autocast is for GPUs.
    with pytest.warns(UserWarning, match=r"on CPU means 'bf16-mixed'"):
        precision = parse_precision(value, "cpu")
    assert isinstance(precision, MixedPrecision) and precision.dtype == torch.bfloat16
    assert precision.scaler is None


def test_16_mixed_has_a_scaler_and_bf16_does_not() -> None:
    assert isinstance(MixedPrecision(torch.float16, "cpu").scaler, torch.amp.GradScaler)
    assert parse_precision("bf16-mixed", "cpu").scaler is None
    assert parse_precision("32-true", "cpu").scaler is None


def test_true_precision_casts_module_inputs_and_init() -> None:
    precision = parse_precision("64-true", "cpu")
    assert isinstance(precision, TruePrecision)
    module = precision.convert_module(nn.Linear(2, 2))
    assert module.weight.dtype == torch.float64
    x, idx = precision.convert_input((torch.ones(2), torch.ones(2, dtype=torch.long)))
    assert x.dtype == torch.float64 and idx.dtype == torch.long
    with precision.module_init_context():
        assert nn.Linear(2, 2).weight.dtype == torch.float64
    assert torch.get_default_dtype() == torch.float32


def test_mixed_outputs_come_back_float32() -> None:
    precision = MixedPrecision(torch.bfloat16, "cpu")
    with precision.forward_context():
        out = nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    assert precision.convert_output({"y": out})["y"].dtype == torch.float32


def test_base_precision_is_a_no_op() -> None:
    precision = Precision()
    module = nn.Linear(2, 2)
    assert precision.convert_module(module) is module
    data = (torch.ones(1),)
    assert precision.convert_input(data) is data
    assert precision.state_dict() == {}


def test_scaler_state_round_trip() -> None:
    precision = MixedPrecision(torch.float16, "cpu")
    state = precision.state_dict()
    assert "scaler" in state
    other = MixedPrecision(torch.float16, "cpu")
    other.load_state_dict(state)
    assert other.state_dict()["scaler"]["scale"] == state["scaler"]["scale"]


def test_precision_classes_refuse_dtypes_they_do_not_implement() -> None:
    with pytest.raises(
        ValueError, match=r"MixedPrecision\(dtype=torch.float32\).*torch.float16 or torch.bfloat16"
    ):
        MixedPrecision(torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"TruePrecision\(dtype=torch.float32\).*Precision\(\)"):
        TruePrecision(torch.float32)
    assert TruePrecision(torch.bfloat16).name == "bf16-true"


class _WithPositions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[-1]) / 4.0  # created in forward: follows the default dtype
        return self.lin(x + positions)


@pytest.mark.parametrize("name", ["bf16-true", "64-true", "16-true"])
def test_true_precision_sets_the_default_dtype_while_forward_runs(name: str) -> None:
    from treadle import Fabric

    fabric = Fabric(accelerator="cpu", devices=1, precision=name)
    model = fabric.setup(_WithPositions())
    dtype = model.module.lin.weight.dtype
    if (
        name == "16-true"
    ):  # float16 matmul is not implemented on every CPU build of torch: check the context only
        with fabric.autocast():
            assert torch.get_default_dtype() == dtype
    else:
        out = model(torch.randn(2, 4))
        assert out.dtype == torch.float32  # outputs still come back in the default dtype outside forward
        with fabric.autocast():
            assert torch.zeros(1).dtype == dtype
    assert torch.get_default_dtype() == torch.float32


def test_mixed_precision_casts_floating_inputs_to_its_dtype_as_lightning_does() -> None:
    # A forward that mixes its input with a tensor it makes itself sees one dtype under autocast.
    seen: list[torch.dtype] = []

    class Mixes(nn.Module):
        def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            seen.extend([x.dtype, idx.dtype])
            return x * torch.ones(2, dtype=torch.bfloat16)

    from treadle import Fabric

    fabric = Fabric(accelerator="cpu", precision="bf16-mixed")
    model = fabric.setup(Mixes())
    out = model(torch.ones(2, dtype=torch.float64), idx=torch.ones(2, dtype=torch.long))
    assert seen == [torch.bfloat16, torch.long]
    assert out.dtype == torch.float32  # outputs leave autocast in float32
