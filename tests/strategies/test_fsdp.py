"""FSDPStrategy options and one in-process rank on CPU (the two-rank checks live in tests/distributed)."""

from __future__ import annotations

import gc
import os
import pickle
import weakref
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

from treadle import Fabric
from treadle.checkpoint import MissingKeysError, load_checkpoint, save_checkpoint
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


def _one_rank_fsdp(state_dict_type: str = "sharded") -> tuple[Fabric, FSDPStrategy]:
    strategy = FSDPStrategy(state_dict_type=state_dict_type, timeout=timedelta(seconds=20))  # type: ignore[arg-type]
    fabric = Fabric(accelerator="cpu", strategy=strategy)
    fabric.launch()
    return fabric, strategy


@pytest.mark.parametrize("kind", ["sharded", "full"])
def test_checkpoint_errors_match_the_single_device_ones(tmp_path: Path, kind: str) -> None:
    fabric, _ = _one_rank_fsdp(kind)
    model = fabric.setup(nn.Linear(2, 2))
    plain = nn.Linear(2, 2)

    def keep_all(name: str, value: object) -> bool:
        return True

    # The same misspelled filter key, saved by FSDP and by one process: the same ValueError.
    with pytest.raises(ValueError) as single:
        save_checkpoint(tmp_path / "single.pt", {"model": plain}, filter={"modle": keep_all})
    with pytest.raises(ValueError) as sharded:
        fabric.save(tmp_path / "ckpt", {"model": model}, filter={"modle": keep_all})
    assert str(sharded.value) == str(single.value)
    assert "filter has 'modle', which state does not have. state holds: 'model'" in str(single.value)
    assert not list(tmp_path.iterdir()), "nothing is written when the filter is wrong"

    # A key the checkpoint lacks: MissingKeysError with the same text (up to the path) from both.
    fabric.save(tmp_path / "ckpt", {"model": model})
    save_checkpoint(tmp_path / "single.pt", {"model": plain})
    extra = torch.optim.SGD(plain.parameters(), lr=1)
    with pytest.raises(MissingKeysError) as single_missing:
        load_checkpoint(tmp_path / "single.pt", {"model": plain, "optimizer": extra})
    with pytest.raises(MissingKeysError) as sharded_missing:
        fabric.load(tmp_path / "ckpt", {"model": model, "optimizer": extra})
    shown = os.fspath(tmp_path / "ckpt"), os.fspath(tmp_path / "single.pt")
    assert str(sharded_missing.value).replace(*shown) == str(single_missing.value)


def test_unsharded_compiled_modules_restore_like_single_device(tmp_path: Path) -> None:
    fabric, _ = _one_rank_fsdp("full")
    model = fabric.setup(nn.Linear(2, 2))
    head = nn.Linear(2, 1)
    fabric.save(tmp_path / "ckpt.pt", {"model": model, "head": torch.compile(head)})
    fresh = nn.Linear(2, 1)
    # The saved names carry no `_orig_mod.` prefix; loading must unwrap the compiled module the same way.
    fabric.load(tmp_path / "ckpt.pt", {"model": model, "head": torch.compile(fresh)})
    assert torch.equal(fresh.weight, head.weight) and torch.equal(fresh.bias, head.bias)


def test_sharded_checkpoint_of_another_format_is_refused(tmp_path: Path) -> None:
    fabric, _ = _one_rank_fsdp()
    model = fabric.setup(nn.Linear(2, 2))
    fabric.save(tmp_path / "ckpt", {"model": model})
    meta = torch.load(tmp_path / "ckpt" / "meta.pt", weights_only=True)
    torch.save({**meta, "format": "treadle-sharded-99"}, tmp_path / "ckpt" / "meta.pt")
    with pytest.raises(
        ValueError, match=r"format 'treadle-sharded-99', but this treadle reads 'treadle-sharded-1'.*'full'"
    ):
        fabric.load(tmp_path / "ckpt", {"model": model})


def test_an_optimizer_that_stepped_is_refused_before_it_is_changed() -> None:
    _fabric, strategy = _one_rank_fsdp()
    model = nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(1, 2)).sum().backward()
    optimizer.step()
    before = list(optimizer.param_groups[0]["params"])
    strategy.setup_module(model)
    with pytest.raises(RuntimeError, match=r"already has state .* Create the optimizer fresh"):
        strategy.setup_optimizer(optimizer)
    assert all(a is b for a, b in zip(optimizer.param_groups[0]["params"], before, strict=True))


def test_the_strategy_keeps_no_parameter_alive() -> None:
    fabric, strategy = _one_rank_fsdp()
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    sharded = [weakref.ref(p) for p in model.parameters()]
    assert all(p() is q for p, q in zip(sharded, optimizer.param_groups[0]["params"], strict=True))
    del model, optimizer
    gc.collect()
    assert [p() for p in sharded] == [None, None], "sharded parameters outlive their model"
    assert len(strategy._replaced) == 0, "entries of dead parameters are dropped"
