from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from treadle import Fabric
from treadle.data import FabricDataLoader
from treadle.precision import MixedPrecision
from treadle.wrappers import FabricModule, FabricOptimizer


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))


def batches(n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 4, generator=generator), torch.randn(8, 2, generator=generator)) for _ in range(n)
    ]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_after_setup(self, fabric: Fabric, module: nn.Module) -> None:
        self.events.append(("on_after_setup", type(module).__name__))

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.events.append(("on_before_backward", loss.item()))

    def on_after_backward(self) -> None:
        self.events.append(("on_after_backward", None))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.events.append(("on_before_optimizer_step", type(optimizer).__name__))

    def on_after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.events.append(("on_after_optimizer_step", type(optimizer).__name__))


def test_runtime_hooks_fire_through_call() -> None:
    recorder = Recorder()
    fabric = Fabric(accelerator="cpu", callbacks=recorder)
    model, optimizer = fabric.setup(make_model(), torch.optim.SGD(make_model().parameters(), lr=0.1))
    x, y = batches(1)[0]
    loss = nn.functional.mse_loss(model(x), y)
    fabric.backward(loss)
    optimizer.step()
    names = [name for name, _ in recorder.events]
    assert names == [
        "on_after_setup",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_after_optimizer_step",
    ]
    assert recorder.events[0][1] == "FabricModule"
    assert recorder.events[3][1] == "SGD"  # the hook gets the user's optimizer, not the wrapper


def test_setup_return_shapes() -> None:
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    assert isinstance(fabric.setup(model), FabricModule)
    model = make_model()
    opt1 = torch.optim.SGD(model.parameters(), lr=0.1)
    opt2 = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(opt1, 1)
    out = fabric.setup(model, opt1, opt2, scheduler=scheduler)
    assert len(out) == 4 and out[3] is scheduler
    assert isinstance(out[1], FabricOptimizer) and isinstance(out[2], FabricOptimizer)


def test_wrappers_behave_like_the_originals() -> None:
    fabric = Fabric(accelerator="cpu")
    raw = make_model()
    raw.custom_value = 7  # type: ignore[assignment]
    raw_opt = torch.optim.Adam(raw.parameters(), lr=1e-3)
    model, optimizer = fabric.setup(raw, raw_opt)
    assert model.custom_value == 7
    assert model.module[0] is raw[0] and getattr(model, "0") is raw[0]
    assert list(model.state_dict()) == list(raw.state_dict())  # no wrapper prefixes
    assert [name for name, _ in model.named_parameters()] == [name for name, _ in raw.named_parameters()]
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups is raw_opt.param_groups
    assert optimizer.state_dict()["param_groups"] == raw_opt.state_dict()["param_groups"]
    model.eval()
    assert not model.training and not raw.training
    model.train()
    assert model.training and raw.training
    # A scheduler built on the wrapped optimizer drives the real param groups.
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer.step()
    scheduler.step()
    assert raw_opt.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_setting_up_a_set_up_module_is_an_error_and_the_raw_module_may_be_set_up_again() -> None:
    fabric = Fabric(accelerator="cpu")
    raw = make_model()
    wrapped = fabric.setup(raw)
    with pytest.raises(ValueError, match=r"Fabric.setup\(\) got a module that is already set up"):
        fabric.setup(wrapped)
    with pytest.raises(ValueError, match=r"Fabric.setup_module\(\) got a module that is already set up"):
        fabric.setup_module(wrapped)
    # As in Lightning: the model first alone, later with its optimizer.
    again, optimizer = fabric.setup(raw, torch.optim.SGD(raw.parameters(), lr=0.1))
    assert again.module is raw and again is not wrapped
    fabric.backward(again(torch.ones(1, 4)).sum())
    optimizer.step()


def test_misuse_errors_say_what_to_do() -> None:
    fabric = Fabric(accelerator="cpu")
    with pytest.raises(TypeError, match="module returned by fabric.setup"):
        fabric.no_backward_sync(make_model())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fabric.setup("model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Optimizer instances"):
        fabric.setup_optimizers(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_nodes": 0}, "num_nodes=0"),
        ({"strategy": "dpp"}, r"strategy='dpp'.*'auto', 'single_device', 'ddp'"),
        ({"precision": "fp16"}, r"precision='fp16'"),
        ({"accelerator": "tpu"}, r"accelerator='tpu'"),
        ({"loggers": [object()]}, r"loggers=.*item 0"),
    ],
)
def test_constructor_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        Fabric(accelerator=kwargs.pop("accelerator", "cpu"), **kwargs)


def hand_written_losses(precision: str) -> list[float]:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    if precision == "64-true":
        model = model.double()
    losses = []
    for x, y in batches():
        if precision == "64-true":
            # Outputs come back in float32 (as in Lightning Fabric): the loss is computed there.
            loss = nn.functional.mse_loss(model(x.double()).float(), y)
        elif dtype is not None:
            with torch.autocast("cpu", dtype=dtype):
                out = model(x)
            loss = nn.functional.mse_loss(out.float(), y)
        else:
            loss = nn.functional.mse_loss(model(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def fabric_losses(precision: str) -> list[float]:
    # "16-mixed" on CPU means bf16-mixed (as in Lightning); float16 with its grad scaler is asked for by class.
    chosen = MixedPrecision(torch.float16, "cpu") if precision == "16-mixed" else precision
    fabric = Fabric(accelerator="cpu", precision=chosen)  # type: ignore[arg-type]
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    losses = []
    for x, y in batches():
        out = model(x)
        loss = nn.functional.mse_loss(out, y.to(out.dtype))
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed", "16-mixed"])
def test_losses_match_a_hand_written_loop(precision: str) -> None:
    assert fabric_losses(precision) == hand_written_losses(precision)


def test_clip_gradients_unscales_first_under_a_scaler() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    fabric = Fabric(accelerator="cpu", precision=MixedPrecision(torch.float16, "cpu", scaler=scaler))
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = batches(1)[0]
    fabric.backward(nn.functional.mse_loss(model(x), y))
    norm = fabric.clip_gradients(model, optimizer, max_norm=0.01)
    assert norm is not None and 0 < float(norm) < 10  # a scaled norm would be 256x larger
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(total) == pytest.approx(0.01, rel=1e-3)
    optimizer.step()  # must not unscale a second time
    assert scaler.get_scale() == 2.0**8  # the step was taken, not skipped


def test_overflow_under_a_scaler_skips_the_step_instead_of_raising() -> None:
    fabric = Fabric(accelerator="cpu", precision=MixedPrecision(torch.float16, "cpu"))
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = batches(1)[0]
    fabric.backward(nn.functional.mse_loss(model(x), y) * 1e4)  # overflows in float16 at scale 65536
    fabric.clip_gradients(model, optimizer, max_norm=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert fabric.precision.scaler is not None and fabric.precision.scaler.get_scale() < 65536.0


def test_clip_gradients_arguments() -> None:
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="exactly one"):
        fabric.clip_gradients(model, optimizer)
    with pytest.raises(ValueError, match="exactly one"):
        fabric.clip_gradients(model, optimizer, clip_val=1.0, max_norm=1.0)
    x, y = batches(1)[0]
    fabric.backward(nn.functional.mse_loss(model(x), y) * 1000)
    fabric.clip_gradients(model, optimizer, clip_val=0.001)
    assert max(float(p.grad.abs().max()) for p in model.parameters()) <= 0.001 + 1e-9


@dataclasses.dataclass
class Batch:
    x: torch.Tensor
    label: str


def test_to_device_handles_nested_collections() -> None:
    fabric = Fabric(accelerator="cpu")
    data = {"a": [torch.ones(1), (torch.zeros(2), "text")], "b": Batch(torch.ones(3), "y")}
    moved = fabric.to_device(data)
    assert moved["a"][1][1] == "text" and isinstance(moved["b"], Batch) and moved["b"].label == "y"
    assert moved["b"].x.device == fabric.device


def test_dataloader_wrapper() -> None:
    fabric = Fabric(accelerator="cpu")
    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=4)
    wrapped = fabric.setup_dataloaders(loader)
    assert isinstance(wrapped, FabricDataLoader) and len(wrapped) == 3
    assert wrapped.batch_size == 4
    assert torch.equal(torch.cat([b[0] for b in wrapped]), torch.arange(10.0))
    first, second = fabric.setup_dataloaders(loader, loader)
    assert isinstance(first, FabricDataLoader) and isinstance(second, FabricDataLoader)


def test_init_module_and_tensor() -> None:
    fabric = Fabric(accelerator="cpu", precision="64-true")
    with fabric.init_module():
        layer = nn.Linear(2, 2)
    assert layer.weight.dtype == torch.float64
    with fabric.init_tensor():
        assert torch.ones(1).dtype == torch.float64
    with Fabric(accelerator="cpu").init_module(empty_init=True):
        torch.manual_seed(0)
        skipped = nn.Linear(64, 64)
    torch.manual_seed(0)
    assert not torch.equal(skipped.weight, nn.Linear(64, 64).weight)


class ListLogger:
    def __init__(self) -> None:
        self.rows: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((dict(metrics), step))


def test_log_converts_tensors_and_rejects_vectors() -> None:
    logger = ListLogger()
    fabric = Fabric(accelerator="cpu", loggers=logger)
    fabric.log("loss", torch.tensor(0.5), step=3)
    fabric.log_dict({"a": torch.tensor([2.0]), "b": 1}, step=4)
    assert logger.rows == [({"loss": 0.5}, 3), ({"a": 2.0, "b": 1}, 4)]
    assert isinstance(logger.rows[0][0]["loss"], float)
    with pytest.raises(ValueError, match=r"shape \(2,\).*mean\(\)"):
        fabric.log("v", torch.ones(2))
    for text in ("0.5", "nan", b"1"):  # text that reads as a number is still text
        with pytest.raises(TypeError, match="not a number"):
            fabric.log("t", text)
    fabric.log("flag", True, step=5)
    assert logger.rows[-1] == ({"flag": 1.0}, 5)
    assert fabric.logger is logger
    with pytest.raises(AttributeError, match="no logger"):
        _ = Fabric(accelerator="cpu").logger


def test_collectives_are_identities_on_one_process() -> None:
    fabric = Fabric(accelerator="cpu")
    assert fabric.world_size == 1 and fabric.global_rank == 0 and fabric.is_global_zero
    assert fabric.broadcast({"a": 1}) == {"a": 1}
    assert fabric.all_gather(torch.ones(2)).shape == (1, 2)
    assert float(fabric.all_reduce(torch.tensor(3.0), reduce_op="sum")) == 3.0
    assert fabric.all_reduce_bool(True) is True
    with pytest.raises(ValueError, match="reduce_op='median'"):
        fabric.all_reduce(torch.ones(1), reduce_op="median")
    with fabric.rank_zero_first():
        pass
    fabric.barrier()


def test_save_and_load_round_trip(tmp_path: Any) -> None:
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.Adam(model.parameters()))
    x, y = batches(1)[0]
    fabric.backward(nn.functional.mse_loss(model(x), y))
    optimizer.step()
    path = tmp_path / "sub" / "ckpt.pt"
    fabric.save(path, {"model": model, "optimizer": optimizer, "step": 5, "extra": [1, 2]})
    saved = copy.deepcopy(model.state_dict())

    other = make_model()
    other_model, other_opt = fabric.setup(other, torch.optim.Adam(other.parameters()))
    state = {"model": other_model, "optimizer": other_opt, "step": 0}
    remainder = fabric.load(path, state)
    assert state["step"] == 5 and remainder == {"extra": [1, 2]}
    for key, value in saved.items():
        assert torch.equal(other_model.state_dict()[key], value)
    assert other_opt.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


def test_compiled_module_checkpoints_without_prefix(tmp_path: Any) -> None:
    fabric = Fabric(accelerator="cpu")
    raw = make_model()
    compiled = torch.compile(raw)
    model = fabric.setup(compiled)
    assert all(not key.startswith("_orig_mod") for key in model.state_dict())
    fabric.save(tmp_path / "c.pt", {"model": model})
    assert all(not key.startswith("_orig_mod") for key in torch.load(tmp_path / "c.pt")["model"])


def test_print_only_on_rank_zero(capsys: pytest.CaptureFixture[str]) -> None:
    Fabric(accelerator="cpu").print("hello")
    assert capsys.readouterr().out == "hello\n"


class WithStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, x: torch.Tensor) -> torch.Tensor:
        inside = torch.is_autocast_enabled("cpu")
        out = self(x)  # forward itself still works from inside a redirected method
        return out.sum() if inside else out.sum() * float("nan")


def test_custom_methods_run_through_forward_under_mixed_precision() -> None:
    fabric = Fabric(accelerator="cpu", precision="bf16-mixed")
    model = fabric.setup(WithStep())
    loss = model.training_step(torch.randn(2, 4))
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert "forward" not in model.module.__dict__  # restored after the call
    assert model(torch.randn(2, 4)).shape == (2, 4)


def test_custom_methods_are_untouched_when_nothing_acts_in_forward() -> None:
    fabric = Fabric(accelerator="cpu")
    raw = WithStep()
    model = fabric.setup(raw)
    assert model.training_step == raw.training_step  # the original bound method, no indirection


def test_fabric_hooks_receive_fabric_and_hook_arguments() -> None:
    seen: list[tuple[str, Any, Any]] = []

    class Context:
        def on_before_backward(self, loss: torch.Tensor, fabric: Fabric, trainer: Any = None) -> None:
            seen.append(("backward", fabric, trainer))

        def on_after_optimizer_step(self, optimizer: Any, trainer: Any = None) -> None:
            seen.append(("step", None, trainer))

    fabric = Fabric(accelerator="cpu", callbacks=Context())
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = batches(1)[0]
    marker = object()
    with fabric.hook_arguments(trainer=marker):
        fabric.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
    fabric.backward(nn.functional.mse_loss(model(x), y))
    assert seen == [("backward", fabric, marker), ("step", None, marker), ("backward", fabric, None)]
    with pytest.raises(ValueError, match="loss"), fabric.hook_arguments(loss=1):
        pass


def test_optimizer_step_hooks_receive_the_strategy_as_lightning_callbacks_declare_it() -> None:
    seen: list[tuple[str, Any, Any]] = []

    class LightningStyle:
        def on_before_optimizer_step(self, strategy: Any, optimizer: Any) -> None:
            seen.append(("before", strategy, optimizer))

        def on_after_optimizer_step(self, strategy: Any, optimizer: Any) -> None:
            seen.append(("after", strategy, optimizer))

    fabric = Fabric(accelerator="cpu", callbacks=[LightningStyle()])
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    optimizer.step()
    assert seen == [
        ("before", fabric.strategy, optimizer.optimizer),
        ("after", fabric.strategy, optimizer.optimizer),
    ]


def test_all_reduce_takes_numbers_nested_and_reduce_ops() -> None:
    fabric = Fabric(accelerator="cpu")
    out = fabric.all_reduce({"n": 3, "xs": [1.5, torch.tensor(2.0)]}, None, "sum")
    assert isinstance(out["n"], torch.Tensor) and float(out["n"]) == 3.0 and out["n"].dtype == torch.float32
    assert float(out["xs"][0]) == 1.5 and float(out["xs"][1]) == 2.0
    assert float(fabric.all_reduce(4, reduce_op=torch.distributed.ReduceOp.MAX)) == 4.0


@dataclasses.dataclass
class WithDerived:
    x: torch.Tensor
    mask: torch.Tensor = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.mask = torch.ones_like(self.x)


def test_to_device_keeps_init_false_fields() -> None:
    fabric = Fabric(accelerator="cpu")
    data = WithDerived(torch.zeros(2))
    data.mask = torch.full((2,), 7.0)
    moved = fabric.to_device(data)
    assert torch.equal(moved.mask, torch.full((2,), 7.0))


def test_wrapped_optimizer_copies_and_pickles() -> None:
    import pickle

    fabric = Fabric(accelerator="cpu")
    model = make_model()
    _, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    copied = copy.deepcopy(optimizer)
    assert copied.param_groups[0]["lr"] == 0.1
    assert isinstance(pickle.loads(pickle.dumps(optimizer.optimizer)), torch.optim.SGD)


def test_clip_gradients_accepts_the_plain_optimizer() -> None:
    fabric = Fabric(accelerator="cpu")
    model = make_model()
    raw_optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, _ = fabric.setup(model, raw_optimizer)
    x, y = batches(1)[0]
    fabric.backward(nn.functional.mse_loss(model(x), y) * 100)
    fabric.clip_gradients(model, raw_optimizer, max_norm=0.5)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(total) == pytest.approx(0.5, rel=1e-4)


def test_declared_hooks_are_known_before_constructor_callbacks_are_checked() -> None:
    class Mine:
        def on_my_event(self) -> str:
            return "ran"

    fabric = Fabric(accelerator="cpu", callbacks=Mine(), strict_hooks=True, hooks=["on_my_event"])
    assert fabric.call("on_my_event") == ["ran"]
    with pytest.raises(ValueError, match="on_my_event"):
        Fabric(accelerator="cpu", callbacks=Mine(), strict_hooks=True)


def test_one_process_strategy_rejects_several_devices_and_reuse() -> None:
    from treadle.strategies import SingleDeviceStrategy

    with pytest.raises(ValueError, match=r"strategy='single_device'.*devices=2.*strategy='ddp'"):
        Fabric(accelerator="cpu", strategy="single_device", devices=2)
    strategy = SingleDeviceStrategy()
    Fabric(accelerator="cpu", strategy=strategy, precision="16-mixed")
    with pytest.raises(ValueError, match="already belongs to another Fabric"):
        Fabric(accelerator="cpu", strategy=strategy)


@pytest.mark.parametrize("precision", [["bf16"], 16.0, "BF16"])
def test_precision_values_that_only_look_right(precision: Any) -> None:
    with pytest.raises(ValueError, match="is not a precision"):
        Fabric(accelerator="cpu", precision=precision)


def test_true_precision_outputs_come_back_float32() -> None:
    fabric = Fabric(accelerator="cpu", precision="64-true")
    model = fabric.setup(make_model())
    assert next(model.parameters()).dtype == torch.float64
    assert model(torch.randn(2, 4)).dtype == torch.float32


def test_rank_zero_first_releases_the_barrier_when_rank_zero_fails() -> None:
    fabric = Fabric(accelerator="cpu")
    calls: list[str] = []
    fabric.strategy.barrier = lambda name=None: calls.append(str(name))  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom"), fabric.rank_zero_first():
        raise RuntimeError("boom")
    assert calls == ["rank_zero_first"]


def test_seed_everything_seeds_dataloader_workers_on_one_device() -> None:
    from treadle.seed import WorkerSeeder

    fabric = Fabric(accelerator="cpu")
    fabric.seed_everything(7)
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(4.0)), num_workers=2))
    assert isinstance(loader.worker_init_fn, WorkerSeeder)
    fabric.seed_everything(7, workers=False)
    plain = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(4.0)), num_workers=2))
    assert plain.worker_init_fn is None


def test_load_raw_unwraps_set_up_objects(tmp_path: Any) -> None:
    fabric = Fabric(accelerator="cpu")
    source = make_model()
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    target = make_model()
    with torch.no_grad():
        for parameter in target.parameters():
            parameter.zero_()
    model = fabric.setup(target)
    fabric.load_raw(tmp_path / "weights.pt", model)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), source.parameters(), strict=True))
    with pytest.raises(ValueError, match="weights_only=False"):
        fabric.load_raw(tmp_path / "weights.pt", model, weights_only=False)


def test_callbacks_can_be_removed_and_instrumented_through_fabric() -> None:
    class Hello:
        def on_x(self) -> str:
            return "hello"

    first, second = Hello(), Hello()
    fabric = Fabric(accelerator="cpu", callbacks=[first, second])
    seen: list[tuple[str, str]] = []

    def wrapper(callback: object, hook: str, method: Any) -> Any:
        def timed() -> Any:
            seen.append((type(callback).__name__, hook))
            return method()

        return timed

    fabric.instrument_callbacks(wrapper)
    assert fabric.call("on_x") == ["hello", "hello"] and seen == [("Hello", "on_x")] * 2
    fabric.instrument_callbacks(None)
    fabric.remove_callback(first)
    assert fabric.callbacks == (second,) and fabric.call("on_x") == ["hello"] and len(seen) == 2


def test_hooks_argument_must_be_a_list_of_names() -> None:
    with pytest.raises(TypeError, match=r"Fabric\(hooks=123\) must be a list of hook names"):
        Fabric(accelerator="cpu", hooks=123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Fabric\(hooks=.on_x.\) must be a list"):
        Fabric(accelerator="cpu", hooks="on_x")
