"""ModelParallelStrategy options, and one in-process rank on CPU (two ranks: tests/distributed)."""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from treadle import Fabric
from treadle.cli import main
from treadle.strategies import ModelParallelStrategy


def keep(model: nn.Module, device_mesh: Any) -> nn.Module:
    return model


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"parallelize_fn": "tp"}, TypeError, r"parallelize_fn='tp'\) must be a function"),
        ({"data_parallel_size": 0}, ValueError, r"data_parallel_size=0\) must be 'auto' or a positive int"),
        ({"tensor_parallel_size": "2"}, ValueError, r"tensor_parallel_size='2'\) must be 'auto'"),
        ({"save_distributed_checkpoint": "yes"}, TypeError, r"save_distributed_checkpoint='yes'\) must be"),
        ({"hang_timeout": -1}, ValueError, r"hang_timeout=-1"),
    ],
)
def test_invalid_options_are_named(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    options: dict[str, Any] = {"parallelize_fn": keep, **kwargs}
    with pytest.raises(error, match=match):
        ModelParallelStrategy(**options)


def test_sizes_that_do_not_fit_the_job_fail_in_fabric_init() -> None:
    strategy = ModelParallelStrategy(keep, data_parallel_size=2, tensor_parallel_size=2)
    with pytest.raises(
        ValueError, match=r"does not fit a job of 2 processes: the two sizes must multiply to 2"
    ):
        Fabric(accelerator="cpu", devices=2, strategy=strategy)


def test_auto_sizes_resolve_against_the_world_size() -> None:
    strategy = ModelParallelStrategy(keep, tensor_parallel_size=2)
    Fabric(accelerator="cpu", devices=4, strategy=strategy)
    assert strategy.mesh_shape() == (2, 2)
    auto = ModelParallelStrategy(keep)
    Fabric(accelerator="cpu", devices=2, strategy=auto)
    assert auto.mesh_shape() == (1, 2), "'auto': tensor parallel within the machine, data parallel across"


def test_repr_and_pickle() -> None:
    strategy = ModelParallelStrategy(keep, data_parallel_size=2, save_distributed_checkpoint=False)
    assert repr(strategy) == (
        "ModelParallelStrategy(parallelize_fn=keep, data_parallel_size=2, save_distributed_checkpoint=False)"
    )
    copy = pickle.loads(pickle.dumps(strategy))
    assert copy.data_parallel_size == 2 and copy.sharded_modules() == []


def test_the_mesh_needs_a_launched_fabric() -> None:
    with pytest.raises(
        RuntimeError, match=r"pass it to Fabric\(strategy=...\) and call fabric.launch\(\) first"
    ):
        _ = ModelParallelStrategy(keep).device_mesh


class NoReset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))


def test_one_rank_parallelize_fn_is_checked_and_meta_models_are_initialised() -> None:
    def returns_nothing(model: nn.Module, device_mesh: Any) -> None:
        return None

    strategy = ModelParallelStrategy(returns_nothing, timeout=timedelta(seconds=20))  # type: ignore[arg-type]
    fabric = Fabric(accelerator="cpu", strategy=strategy)
    fabric.launch()
    try:
        assert strategy.device_mesh.mesh_dim_names == ("data_parallel", "tensor_parallel")
        with pytest.raises(TypeError, match=r"returned NoneType, but it must return the parallelized model"):
            fabric.setup(nn.Linear(2, 2))
        strategy.parallelize_fn = keep
        with fabric.init_module(empty_init=True):
            model = nn.Sequential(nn.Linear(3, 3), NoReset())
        assert model[0].weight.is_meta
        with pytest.warns(UserWarning, match=r"have no reset_parameters\(\): 1\. Initialise them yourself"):
            model = fabric.setup(model)
        assert not model.module[0].weight.is_meta and torch.isfinite(model.module[0].weight).all()
    finally:
        fabric.strategy.teardown()


def test_consolidate_names_a_folder_that_is_not_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["consolidate", str(tmp_path / "nope"), str(tmp_path / "out.pt")])
    assert stopped.value.code == 2
    assert "does not exist, so it is not a sharded treadle checkpoint" in capsys.readouterr().err
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "meta.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["consolidate", str(tmp_path / "ckpt"), str(tmp_path / "ckpt" / "out.pt")])
    assert "is inside the checkpoint folder" in capsys.readouterr().err
