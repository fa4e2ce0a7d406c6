"""The set-up module and optimizer: the shortcuts that keep a step cheap must not change what runs."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn

from treadle import Fabric
from treadle.precision import MixedPrecision, Precision
from treadle.strategies.base import Strategy
from treadle.wrappers import FabricOptimizer


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_hooks_on_the_wrapper_still_run() -> None:
    model = Fabric(accelerator="cpu").setup_module(make_model())
    seen: list[str] = []
    pre = model.register_forward_pre_hook(lambda module, args: seen.append("pre"))
    post = model.register_forward_hook(lambda module, args, output: seen.append("post"))
    model(torch.randn(2, 4))
    assert seen == ["pre", "post"]
    pre.remove()
    post.remove()
    model(torch.randn(2, 4))
    assert seen == ["pre", "post"]


def test_global_module_hooks_see_the_wrapper() -> None:
    model = Fabric(accelerator="cpu").setup_module(make_model())
    seen: list[str] = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, args, output: seen.append(type(module).__name__)
    )
    try:
        model(torch.randn(2, 4))
    finally:
        handle.remove()
    assert seen[-1] == "FabricModule"  # the wrapper's own call, after those of the modules inside it
    assert "Sequential" in seen


def test_backward_hooks_on_the_wrapper_still_run() -> None:
    model = Fabric(accelerator="cpu").setup_module(make_model())
    grads: list[torch.Size] = []
    model.register_full_backward_hook(lambda module, grad_in, grad_out: grads.append(grad_out[0].shape))
    model(torch.randn(2, 4, requires_grad=True)).sum().backward()
    assert grads == [torch.Size([2, 2])]


def test_module_compile_on_the_wrapper_is_honoured() -> None:
    model = Fabric(accelerator="cpu").setup_module(make_model())
    calls: list[int] = []

    def compiled(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return model.forward(*args, **kwargs)

    model._compiled_call_impl = compiled  # what nn.Module.compile() sets, without compiling for real
    model(torch.randn(2, 4))
    assert calls == [1]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_jit_trace_of_the_wrapper_works() -> None:
    model = Fabric(accelerator="cpu").setup_module(make_model())
    x = torch.randn(2, 4)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    torch.testing.assert_close(traced(x), model(x))


class ScaledBackward(Strategy):
    def __init__(self) -> None:
        super().__init__()
        self.backward_calls = 0
        self.step_calls = 0

    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        self.backward_calls += 1
        super().backward(tensor * 2, module, *args, **kwargs)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        self.step_calls += 1
        return super().optimizer_step(optimizer, **kwargs)


def test_a_strategy_that_overrides_backward_and_step_is_called() -> None:
    strategy = ScaledBackward()
    assert not strategy.passes_through
    fabric = Fabric(accelerator="cpu", strategy=strategy)
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(2, 4)).sum())
    optimizer.step()
    assert (strategy.backward_calls, strategy.step_calls) == (1, 1)


def test_a_precision_that_overrides_backward_is_called() -> None:
    class Halve(Precision):
        def pre_backward(self, tensor: torch.Tensor) -> torch.Tensor:
            return tensor / 2

    precision = Halve()
    assert not precision.passes_through
    strategy = Strategy()
    strategy.precision = precision
    assert not strategy.passes_through
    assert Strategy().passes_through and Precision().passes_through


@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed", "bf16-true"])
def test_precisions_without_a_scaler_pass_through(precision: str) -> None:
    assert Fabric(accelerator="cpu", precision=precision).strategy.passes_through


def test_16_mixed_goes_through_its_grad_scaler() -> None:
    fabric = Fabric(accelerator="cpu", precision=MixedPrecision(torch.float16, "cpu"))
    assert not fabric.strategy.passes_through


def test_an_instance_override_is_seen() -> None:
    strategy = Strategy()
    strategy.optimizer_step = lambda optimizer, **kwargs: None  # type: ignore[method-assign]
    assert not strategy.passes_through


def test_passing_through_gives_the_same_parameters_as_a_plain_loop() -> None:
    torch.manual_seed(3)
    data = [(torch.randn(4, 4), torch.randn(4, 2)) for _ in range(5)]
    plain = make_model()
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    for x, y in data:
        nn.functional.mse_loss(plain(x), y).backward()
        plain_optimizer.step()
        plain_optimizer.zero_grad()
        fabric.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
    for ours, theirs in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)
        assert ours.grad is None


def test_optimizer_zero_grad_and_its_copies() -> None:
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(2, 4)).sum())
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    calls: list[bool] = []
    inner_zero_grad = optimizer.optimizer.zero_grad
    optimizer.zero_grad = lambda set_to_none=True: calls.append(set_to_none)  # lands on the wrapped one
    optimizer.zero_grad()
    assert calls == [True] and optimizer.optimizer.zero_grad is optimizer.zero_grad
    del optimizer.optimizer.zero_grad
    assert optimizer.zero_grad == inner_zero_grad
    with mock.patch.object(optimizer, "zero_grad") as patched:  # lands on the wrapped optimizer, and leaves
        optimizer.zero_grad()
    patched.assert_called_once_with()
    assert optimizer.zero_grad == inner_zero_grad
    assert "zero_grad" in (FabricOptimizer.zero_grad.__doc__ or "")
    for twin in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert twin.optimizer is not optimizer.optimizer
        assert twin.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_forward_set_on_the_wrapper_is_called(precision: str) -> None:
    model = Fabric(accelerator="cpu", precision=precision).setup_module(make_model())
    calls: list[int] = []
    original = model.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    model.forward = counted  # type: ignore[method-assign]
    model(torch.randn(2, 4))
    assert calls == [1]


class CountSteps:
    def __init__(self) -> None:
        self.steps = 0

    def on_after_optimizer_step(self) -> None:
        self.steps += 1


@pytest.mark.parametrize(
    "clone",
    [
        lambda objs: copy.deepcopy(objs),
        lambda objs: copy.deepcopy(objs[::-1])[::-1],  # the copy reaches the optimizer's table first
        lambda objs: pickle.loads(pickle.dumps(objs)),
        lambda objs: pickle.loads(pickle.dumps(objs[::-1]))[::-1],
    ],
)
def test_a_copied_optimizer_fires_the_copied_callbacks(clone: Any) -> None:
    counter = CountSteps()
    fabric = Fabric(accelerator="cpu", callbacks=[counter])
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    optimizer.step()
    fabric_copy, optimizer_copy = clone((fabric, optimizer))
    optimizer_copy.step()
    assert counter.steps == 1
    assert fabric_copy.callbacks[0].steps == 2
    assert optimizer_copy._plans is fabric_copy._callbacks.plans  # one table: plans built once, shared
    assert "on_after_optimizer_step" in fabric_copy._callbacks.plans


@pytest.mark.parametrize(
    "clone",
    [
        copy.deepcopy,
        lambda obj: pickle.loads(pickle.dumps(obj)),
        lambda obj: pickle.loads(pickle.dumps(obj, 1)),
    ],
)
def test_copies_of_a_set_up_module_are_still_refused_and_their_raw_module_accepted(clone: Any) -> None:
    fabric = Fabric(accelerator="cpu")
    empty = clone(fabric)
    model = make_model()
    wrapped = empty.setup_module(model)
    twin_fabric, twin_model, twin_wrapped = clone((empty, model, wrapped))
    with pytest.raises(ValueError, match="already set up"):
        twin_fabric.setup_module(twin_wrapped)
    assert twin_fabric.setup_module(twin_model).module is twin_model


def test_set_up_modules_do_not_keep_a_dropped_module_alive() -> None:
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    fabric.setup_module(model)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


class EpochSampler(torch.utils.data.SequentialSampler):  # type: ignore[type-arg]
    def __init__(self, data: list[int]) -> None:
        super().__init__(data)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_the_sampler_inside_a_batch_sampler_gets_each_epoch_once() -> None:
    fabric = Fabric(accelerator="cpu")
    data = list(range(8))
    inner = EpochSampler(data)
    batch_sampler = torch.utils.data.BatchSampler(inner, batch_size=4, drop_last=False)
    loader = fabric.setup_dataloaders(
        torch.utils.data.DataLoader(data, batch_sampler=batch_sampler), use_distributed_sampler=False
    )
    # The usual loader: its sampler is also the one inside the BatchSampler the DataLoader built.
    shared = EpochSampler(data)
    plain = fabric.setup_dataloaders(
        torch.utils.data.DataLoader(data, sampler=shared, batch_size=4), use_distributed_sampler=False
    )
    for _ in range(3):
        list(loader)
        list(plain)
    assert inner.epochs == [0, 1, 2]
    assert shared.epochs == [0, 1, 2]


def test_a_distributed_sampler_inside_a_batch_sampler_reshuffles() -> None:
    fabric = Fabric(accelerator="cpu")
    data = list(range(8))
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    batch_sampler = torch.utils.data.BatchSampler(sampler, batch_size=4, drop_last=False)
    loader = fabric.setup_dataloaders(
        torch.utils.data.DataLoader(data, batch_sampler=batch_sampler), use_distributed_sampler=False
    )
    first, second = ([batch.tolist() for batch in loader] for _ in range(2))
    assert first != second
    assert sampler.epoch == 1


class Headed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self._temperature = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x) / self._temperature
        head = getattr(self, "head", None)
        return out if head is None else head(out)

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        return self(x) * 0


def test_attributes_set_on_the_set_up_model_reach_the_users_module() -> None:
    original = Headed()
    model = Fabric(accelerator="cpu").setup_module(original)
    model.head = nn.Linear(4, 2)  # a new submodule after setup: forward uses it, and it is saved
    assert original.head is model.head
    assert model(torch.randn(3, 4)).shape == (3, 2)
    assert "head.weight" in model.state_dict()
    assert any(parameter is original.head.weight for parameter in model.parameters())
    x = torch.randn(3, 4)
    model._temperature = 2.0  # a private attribute the user's module has: forward reads the new value
    assert original._temperature == 2.0
    torch.testing.assert_close(model(x), original.head(original.lin(x) / 2.0))
    model._cache = {}  # a new private name goes to the user's module too
    assert original._cache == {} and "_cache" not in model.__dict__


def test_the_wrappers_own_state_stays_on_the_wrapper() -> None:
    original = Headed()
    model = Fabric(accelerator="cpu").setup_module(original)
    model.eval()
    assert not model.training and not original.training and not original.lin.training
    model.train()
    assert model.training and original.lin.training
    model.to(torch.float64)
    assert original.lin.weight.dtype == torch.float64 and model.dtype == torch.float64
    model.register_buffer("flag", torch.ones(1))
    assert "flag" in model._buffers and torch.equal(model.flag, torch.ones(1))
    model.flag = torch.zeros(1)  # registered on the wrapper, so set there
    assert torch.equal(model._buffers["flag"], torch.zeros(1)) and not hasattr(original, "flag")
    model.register_forward_pre_hook(lambda module, args: None)
    assert len(model._forward_pre_hooks) == 1 and not original._forward_pre_hooks


def test_device_and_dtype_read_the_users_module() -> None:
    fabric = Fabric(accelerator="cpu")
    model = fabric.setup_module(nn.Linear(2, 2).to(torch.float64))
    assert model.device == torch.device("cpu") and model.dtype == torch.float64
    buffers_only = nn.Module()
    buffers_only.register_buffer("steps", torch.zeros(1, dtype=torch.long))
    buffers_only.register_buffer("table", torch.zeros(2, dtype=torch.float16))
    model = fabric.setup_module(buffers_only)
    assert model.device == torch.device("cpu") and model.dtype == torch.float16
    model = fabric.setup_module(nn.ReLU())  # neither: the documented defaults
    assert model.device == torch.device("cpu") and model.dtype == torch.get_default_dtype()

    class OwnDevice(nn.Linear):
        device = torch.device("meta")  # a module that says where it is (as Hugging Face models do) wins

    assert fabric.setup_module(OwnDevice(2, 2)).device == torch.device("meta")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_marked_method_runs_through_the_set_up_forward(precision: str) -> None:
    fabric = Fabric(accelerator="cpu", precision=precision)
    original = Headed()
    model = fabric.setup_module(original)
    seen: list[int] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(1))
    model.mark_forward_method("generate")
    model.mark_forward_method(original.generate)  # the bound method is accepted too
    out = model.generate(torch.randn(2, 4))
    assert seen == [1]  # generate went through the set-up model's __call__ (its self(x) is the original's)
    assert torch.equal(out, torch.zeros(2, 4, dtype=out.dtype))


def test_methods_are_not_redirected_without_marking_when_nothing_acts_in_forward() -> None:
    model = Fabric(accelerator="cpu").setup_module(Headed())
    seen: list[int] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(1))
    model.generate(torch.randn(2, 4))
    assert seen == []


@pytest.mark.parametrize(
    ("method", "error", "message"),
    [
        ("genrate", ValueError, "method='genrate'.*Headed has no method 'genrate'"),
        ("lin", ValueError, "method='lin'.*Headed.lin is a Linear, not a method"),
        ("_temperature", ValueError, "Headed._temperature is a float, not a method"),
        ("forward", ValueError, "'forward' is forward itself"),
        ("train", ValueError, "'train' is nn.Module's own method"),
        (nn.Linear(2, 2).forward, TypeError, "takes the name of a method of the set-up Headed"),
        (3, TypeError, "method=3"),
    ],
)
def test_mark_forward_method_rejects_what_is_not_a_custom_method(
    method: Any, error: type, message: str
) -> None:
    model = Fabric(accelerator="cpu").setup_module(Headed())
    with pytest.raises(error, match=message):
        model.mark_forward_method(method)


def test_an_attribute_set_through_the_wrapper_can_be_deleted_through_it() -> None:
    model = Fabric(accelerator="cpu").setup_module(make_model())
    model.flag = 5
    assert model.module.flag == 5  # type: ignore[attr-defined]
    del model.flag
    assert not hasattr(model.module, "flag") and not hasattr(model, "flag")
