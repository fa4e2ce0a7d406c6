from __future__ import annotations

import pytest

from treadle.accelerators import CPUAccelerator
from treadle.precision import MixedPrecision
from treadle.settings import build_runtime
from treadle.strategies import SingleDeviceStrategy


def test_strings_become_connected_objects() -> None:
    accelerator, precision, strategy = build_runtime("cpu", "auto", 1, 1, "bf16")
    assert isinstance(accelerator, CPUAccelerator)
    assert isinstance(precision, MixedPrecision) and precision.name == "bf16-mixed"
    assert isinstance(strategy, SingleDeviceStrategy)
    assert strategy.accelerator is accelerator and strategy.precision is precision


@pytest.mark.parametrize("num_nodes", [0, -1, True, 1.5])
def test_num_nodes_must_be_a_positive_int(num_nodes: object) -> None:
    with pytest.raises(ValueError, match=rf"Fabric\(num_nodes={num_nodes!r}\) must be a positive int"):
        build_runtime("cpu", "auto", 1, num_nodes, "32-true")  # type: ignore[arg-type]


def test_several_cpu_processes_pick_ddp_for_auto() -> None:
    _, _, strategy = build_runtime("cpu", "auto", 2, 1, "32-true")
    assert strategy.name == "ddp" and strategy.device_indices == [0, 1]
