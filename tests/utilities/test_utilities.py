"""treadle.utilities: the helpers Lightning scripts import, and the attribute paths they use."""

from __future__ import annotations

import inspect
import warnings
from collections import OrderedDict
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

import treadle
from treadle import Callback, Fabric
from treadle.utilities import (
    apply_to_collection,
    is_overridden,
    move_data_to_device,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
    seed_everything,
)
from treadle.utilities.types import LRScheduler, Optimizable, ReduceLROnPlateau
from treadle.wrappers import _unwrap_objects, is_wrapped, unwrap_objects


def test_rank_zero_only_runs_on_rank_zero_and_returns_none_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    @rank_zero_only
    def record(value: int, *, twice: bool = False) -> int:
        calls.append(value)
        return value * (2 if twice else 1)

    assert record(3, twice=True) == 6 and calls == [3]
    assert list(inspect.signature(record).parameters) == ["value", "twice"]  # hooks keep their signature
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert record(4) is None and calls == [3]
    with pytest.raises(TypeError, match="decorates a function"):
        rank_zero_only(3)  # type: ignore[type-var]


def test_rank_zero_only_on_a_hook_is_skipped_by_the_dispatcher_elsewhere() -> None:
    class Printer:
        def __init__(self) -> None:
            self.seen: list[int] = []

        @rank_zero_only
        def on_train_batch_end(self, loss: int) -> None:
            self.seen.append(loss)

    printer = Printer()
    Fabric(accelerator="cpu", callbacks=printer).call("on_train_batch_end", loss=1, unused="filtered")
    assert printer.seen == [1]
    assert getattr(Printer.on_train_batch_end, "_treadle_rank_zero_only", False) is True


def test_rank_zero_warn_and_info_speak_on_rank_zero_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.warns(UserWarning, match="skipping validation") as record:
        rank_zero_warn("skipping validation")
    assert record[0].filename == __file__  # attributed to the caller's line
    with pytest.warns(DeprecationWarning):
        rank_zero_warn("old", DeprecationWarning)
    with caplog.at_level("INFO", logger="treadle"):
        rank_zero_info("step %d", 5)
    assert "step 5" in caplog.text
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    caplog.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rank_zero_warn("not on rank 1")
        with caplog.at_level("INFO", logger="treadle"):
            rank_zero_info("nor this")
    assert caplog.text == ""


def test_types_recognise_optimizers_and_schedulers_by_shape() -> None:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    _, set_up = Fabric(accelerator="cpu").setup(nn.Linear(2, 2), torch.optim.SGD(model.parameters(), lr=0.1))
    step = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    assert isinstance(optimizer, Optimizable) and isinstance(set_up, Optimizable)
    assert isinstance(step, LRScheduler) and isinstance(plateau, ReduceLROnPlateau)
    assert not isinstance(model, Optimizable) and not isinstance(optimizer, LRScheduler)
    assert not isinstance(step, ReduceLROnPlateau)


class Pair(NamedTuple):
    first: Any
    second: Any


def test_apply_to_collection_maps_one_type_through_nested_containers() -> None:
    data = OrderedDict(a=torch.ones(2), b=[1, 2.5, Pair(torch.zeros(1), "x")], c=None)
    out = apply_to_collection(data, torch.Tensor, torch.add, 1)
    assert type(out) is OrderedDict and isinstance(out["b"][2], Pair)
    assert torch.equal(out["a"], torch.full((2,), 2.0)) and torch.equal(out["b"][2].first, torch.ones(1))
    assert out["b"][:2] == [1, 2.5] and out["c"] is None
    assert apply_to_collection([1, True, 2], int, lambda v: v * 10, wrong_dtype=bool) == [10, True, 20]
    assert apply_to_collection({"a": 1, "b": "s", "c": None}, int, lambda v: None, include_none=False) == {"b": "s"}
    moved = move_data_to_device({"x": torch.ones(1)}, "cpu")
    assert moved["x"].device == torch.device("cpu")


def test_is_overridden_looks_below_the_framework_bases() -> None:
    class Model(nn.Module):
        def validation_step(self, batch: Any) -> None: ...

    class Child(Model):
        pass

    class Hooks(Callback):
        def on_train_start(self) -> None: ...

    assert is_overridden("validation_step", Model()) and is_overridden("validation_step", Child())
    assert not is_overridden("training_step", Model()) and not is_overridden("forward", Model())
    assert is_overridden("forward", nn.Linear(2, 2)) is False  # torch's own methods are the base
    assert is_overridden("validation_step", Fabric(accelerator="cpu").setup(Model()))
    assert is_overridden("on_train_start", Hooks()) and not is_overridden("on_train_end", Hooks())
    assert not is_overridden("validation_step", Child(), parent=Model)
    with pytest.raises(TypeError, match="method_name"):
        is_overridden(None, Model())  # type: ignore[arg-type]


def test_is_wrapped_and_unwrap_objects_see_modules_optimizers_loaders_and_compiled_models() -> None:
    fabric = Fabric(accelerator="cpu")
    model, optimizer = nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    set_model, set_optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(list(range(4))))
    compiled = torch.compile(set_model)
    assert [is_wrapped(obj) for obj in (set_model, set_optimizer, loader, compiled)] == [True] * 4
    assert not any(is_wrapped(obj) for obj in (model, optimizer, loader.dataloader, torch.compile(model)))
    out = unwrap_objects({"models": [set_model, compiled], "opt": set_optimizer, "data": loader, "n": 3})
    assert out["models"][0] is model and out["models"][1] is model and out["opt"] is optimizer
    assert out["data"] is loader.dataloader and out["n"] == 3
    assert _unwrap_objects is unwrap_objects and treadle.is_wrapped is is_wrapped


def test_lightning_attribute_paths_resolve_after_import_treadle_as_l() -> None:
    from treadle.strategies.fsdp import FSDPStrategy
    from treadle.utilities import types

    assert treadle.fabric.strategies.fsdp.FSDPStrategy is FSDPStrategy  # L.fabric.strategies.fsdp...
    assert treadle.fabric.utilities.types is types
    assert treadle.fabric.utilities.rank_zero_warn is rank_zero_warn
    assert treadle.strategies.ddp.DDPStrategy is treadle.strategies.DDPStrategy
    assert treadle.utilities.seed.seed_everything is seed_everything is treadle.seed_everything
    with pytest.raises(AttributeError, match="treadle.fabric"):
        treadle.fabric.nothing_here  # noqa: B018
