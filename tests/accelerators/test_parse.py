from __future__ import annotations

import pytest
import torch

from treadle.accelerators import CPUAccelerator, CUDAAccelerator, parse_accelerator, parse_devices


def test_auto_picks_cpu_without_gpu() -> None:
    accelerator = parse_accelerator("auto")
    expected = (
        "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert accelerator.name == expected


def test_cpu_and_instance_pass_through() -> None:
    assert isinstance(parse_accelerator("cpu"), CPUAccelerator)
    assert isinstance(parse_accelerator("CPU"), CPUAccelerator)
    mine = CPUAccelerator()
    assert parse_accelerator(mine) is mine


def test_unknown_accelerator_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"accelerator='tpu'.*'auto', 'cpu', 'cuda', 'gpu', 'mps'"):
        parse_accelerator("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_missing_cuda_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"accelerator='cuda'.*not available.*accelerator='auto'"):
        parse_accelerator("cuda")
    assert not CUDAAccelerator.is_available()


@pytest.mark.parametrize(
    ("devices", "expected"),
    [(1, [0]), (3, [0, 1, 2]), ("2", [0, 1]), ([0, 1], [0, 1]), ("0,1", [0, 1]), ("auto", [0])],
)
def test_cpu_devices(devices: object, expected: list[int]) -> None:
    assert parse_devices(devices, CPUAccelerator()) == expected  # type: ignore[arg-type]


def test_all_devices() -> None:
    assert len(parse_devices(-1, CPUAccelerator())) == CPUAccelerator.device_count()


@pytest.mark.parametrize("devices", [0, -2, "x", [], [0, 0], True, 1.5, "0,a"])
def test_bad_devices(devices: object) -> None:
    with pytest.raises(ValueError, match="devices="):
        parse_devices(devices, CPUAccelerator())  # type: ignore[arg-type]


def test_the_public_choices_are_what_the_parser_lists() -> None:
    from treadle.accelerators import ACCELERATOR_CHOICES

    with pytest.raises(ValueError) as raised:
        parse_accelerator("tpu")
    assert f"Choose one of: {', '.join(map(repr, ACCELERATOR_CHOICES))}," in str(raised.value)
    assert "cpu" in ACCELERATOR_CHOICES and "auto" in ACCELERATOR_CHOICES


def test_errors_name_the_value_as_the_caller_wrote_it() -> None:
    with pytest.raises(ValueError, match=r"^Fabric\(devices=0\) must be at least 1"):
        parse_devices(0, CPUAccelerator())
    with pytest.raises(ValueError, match=r"^--devices 'x' must be a number of devices"):
        parse_devices("x", CPUAccelerator(), argument="--devices 'x'")
