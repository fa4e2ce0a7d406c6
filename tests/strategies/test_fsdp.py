"""FSDPStrategy options and one in-process rank on CPU (the two-rank checks live in tests/distributed)."""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

from treadle import Fabric
from treadle.strategies.fsdp import FSDPStrategy


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dtypes.append(self.linear.weight.dtype)
        return self.linear(x)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"shard_modules": Block},
            TypeError,
            r"shard_modules=<class .*Block'>\) must be a set of module classes",
        ),
        ({"shard_modules": [Block()]}, TypeError, r"not torch.nn.Module classes"),
        (
            {"reshard_after_forward": 0},
            ValueError,
            r"reshard_after_forward=0\) must be True, False, or a positive int",
        ),
        ({"cpu_offload": "yes"}, TypeError, r"cpu_offload='yes'\) must be True or False"),
        ({"state_dict_type": "local"}, ValueError, r"state_dict_type='local'\) is not a checkpoint kind"),
        ({"mixed_precision": "bf16"}, TypeError, r"MixedPrecisionPolicy"),
        ({"start_method": "thread"}, ValueError, r"start_method='thread'"),
    ],
)
def test_invalid_options_are_named(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        FSDPStrategy(**kwargs)  # type: ignore[arg-type]


def test_repr_shows_what_differs_from_the_defaults() -> None:
    assert repr(FSDPStrategy()) == "FSDPStrategy()"
    strategy = FSDPStrategy(shard_modules={Block}, cpu_offload=True, state_dict_type="full")
    assert repr(strategy) == "FSDPStrategy(shard_modules={Block}, cpu_offload=True, state_dict_type='full')"


def test_precision_maps_to_the_mixed_precision_policy() -> None:
    strategy = Fabric(accelerator="cpu", strategy="fsdp", precision="bf16-mixed").strategy
    policy = strategy._mixed_precision_policy()  # type: ignore[attr-defined]
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    plain = Fabric(accelerator="cpu", strategy="fsdp").strategy._mixed_precision_policy()  # type: ignore[attr-defined]
    assert plain.param_dtype is None


def test_strategy_pickles_for_spawn() -> None:
    strategy = FSDPStrategy(shard_modules={Block})
    copy = pickle.loads(pickle.dumps(strategy))
    assert copy.shard_modules == (Block,) and copy.sharded_modules() == []


def test_one_rank_trains_in_bf16_and_round_trips_both_checkpoint_kinds(tmp_path: Path) -> None:
    strategy = FSDPStrategy(shard_modules={Block}, timeout=timedelta(seconds=20))
    fabric = Fabric(accelerator="cpu", strategy=strategy, precision="bf16-mixed")
    fabric.launch()
    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    with fabric.no_backward_sync(model):
        fabric.backward(model(torch.randn(2, 4)).sum())
    fabric.backward(model(torch.randn(2, 4)).sum())
    optimizer.step()
    assert model.module[0].dtypes == [torch.bfloat16] * 2, "parameters are gathered in bfloat16 for compute"
    weights = {name: value.full_tensor().clone() for name, value in model.state_dict().items()}
    for kind, path in (("sharded", tmp_path / "sharded"), ("full", tmp_path / "full.pt")):
        strategy.state_dict_type = kind  # type: ignore[assignment]
        fabric.save(path, {"model": model, "optimizer": optimizer, "step": 1})
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.zero_()
        state = {"model": model, "optimizer": optimizer, "step": 0}
        assert fabric.load(path, state) == {}
        assert state["step"] == 1
        assert all(
            torch.equal(weights[name], value.full_tensor()) for name, value in model.state_dict().items()
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.pt", "sharded"]


def test_sharded_checkpoint_needs_objects_to_load_into(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu", strategy=FSDPStrategy(timeout=timedelta(seconds=20)))
    fabric.launch()
    model = fabric.setup(nn.Linear(2, 2))
    fabric.save(tmp_path / "ckpt", {"model": model})
    with pytest.raises(
        ValueError, match=r"is a sharded checkpoint: its tensors can only be loaded into objects"
    ):
        fabric.load(tmp_path / "ckpt")
    with pytest.raises(KeyError, match=r"has no entry for 'optimizer'"):
        fabric.load(
            tmp_path / "ckpt", {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=1)}
        )
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError, match=r"not a sharded treadle checkpoint"):
        fabric.load(tmp_path / "other", {"model": model})


def test_cpu_offload_trains() -> None:
    fabric = Fabric(accelerator="cpu", strategy=FSDPStrategy(cpu_offload=True, timeout=timedelta(seconds=20)))
    fabric.launch()
    model = nn.Linear(4, 4)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    before = model.weight.full_tensor().clone()
    fabric.backward(model(torch.randn(2, 4)).sum())
    optimizer.step()
    assert not torch.equal(before, model.weight.full_tensor())
    assert model.weight.device.type == "cpu"
