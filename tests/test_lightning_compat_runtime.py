"""Behaviours a script ported from Lightning Fabric relies on (issue 10), through treadle's public API."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from treadle import Fabric
from treadle.precision import MixedPrecision


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


def test_all_gather_takes_numbers_nested_like_all_reduce() -> None:
    fabric = Fabric(accelerator="cpu")
    gathered = fabric.all_gather({"correct": 3, "loss": [0.5, torch.tensor(2.0)], "done": True, "name": "x"})
    assert gathered["correct"].tolist() == [3] and gathered["correct"].dtype == torch.int64
    assert gathered["loss"][0].tolist() == [0.5] and gathered["loss"][0].dtype == torch.float32
    assert gathered["loss"][1].tolist() == [2.0]
    assert gathered["done"].tolist() == [True]
    assert gathered["name"] == "x"  # not a number: unchanged
    assert fabric.all_gather(7).sum().item() == 7


class LightningLike(nn.Module):
    """What a LightningModule offers under Fabric, duck-typed: a `_fabric` slot, log through it."""

    def __init__(self) -> None:
        super().__init__()
        self._fabric: Any = None
        self._fabric_optimizers: list[Any] = []
        self.layer = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, x: torch.Tensor) -> torch.Tensor:
        loss = self(x).sum()
        self._fabric.log_dict(metrics={"loss": loss})
        return loss


class ListLogger:
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append(metrics)

    def log_hyperparams(self, params: Any) -> None:
        pass

    def finalize(self, status: str) -> None:
        pass


def test_a_lightning_style_module_is_linked_back_to_its_fabric() -> None:
    logger = ListLogger()
    fabric = Fabric(accelerator="cpu", loggers=logger)
    raw = LightningLike()
    optimizer = torch.optim.SGD(raw.parameters(), lr=0.1)
    model, opt = fabric.setup(raw, optimizer)
    assert raw._fabric is fabric and raw._fabric_optimizers == [opt]
    model.training_step(torch.ones(1, 2))
    assert len(logger.rows) == 1 and "loss" in logger.rows[0]
    plain = nn.Linear(1, 1)
    fabric.setup_module(plain)
    assert not hasattr(plain, "_fabric")  # only modules that have the slot get it


def test_the_set_up_optimizer_is_an_instance_of_the_users_class() -> None:
    import copy
    import pickle

    fabric = Fabric(accelerator="cpu")
    raw = nn.Linear(2, 1)
    adam = torch.optim.AdamW(raw.parameters(), lr=0.1)
    model, optimizer = fabric.setup(raw, adam)
    assert isinstance(optimizer, torch.optim.AdamW) and isinstance(optimizer, torch.optim.Optimizer)
    assert type(optimizer) is type(fabric.setup_optimizers(torch.optim.AdamW(raw.parameters())))
    fabric.backward(model(torch.ones(3, 2)).sum())
    before = raw.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, raw.weight) and adam.state[raw.weight]["step"] == 1
    for twin in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert isinstance(twin, torch.optim.AdamW) and twin.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("precision", ["bf16-mixed", MixedPrecision(torch.float16, "cpu")], ids=["bf16", "fp16"])
def test_loss_backward_instead_of_fabric_backward_is_a_clear_error(precision: Any) -> None:
    fabric = Fabric(accelerator="cpu", precision=precision)
    raw = nn.Linear(2, 1)
    model, _optimizer = fabric.setup(raw, torch.optim.SGD(raw.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match=r"loss.backward\(\).*Call fabric.backward\(loss\) instead"):
        model(torch.ones(3, 2)).sum().backward()
    fabric.backward(model(torch.ones(3, 2)).sum())  # the right way still works, outputs in collections too
    assert raw.weight.grad is not None
    with torch.no_grad():
        model(torch.ones(3, 2))  # nothing to guard when no gradient flows


def test_loss_backward_is_allowed_where_it_equals_fabric_backward() -> None:
    fabric = Fabric(accelerator="cpu", precision="32-true")
    raw = nn.Linear(2, 1)
    model = fabric.setup(raw)
    model(torch.ones(3, 2)).sum().backward()  # as in Lightning Fabric
    assert raw.weight.grad is not None


def test_backward_before_setup_is_plain_and_a_dict_is_a_clear_error() -> None:
    fabric = Fabric(accelerator="cpu", precision=MixedPrecision(torch.float16, "cpu"))
    weight = torch.ones(2, requires_grad=True)
    fabric.backward((weight * 3).sum())  # nothing set up: plain, unscaled backward
    assert weight.grad is not None and weight.grad.tolist() == [3.0, 3.0]
    with pytest.raises(
        TypeError, match=r"not a dict \(keys: \['loss', 'acc'\]\).*fabric.backward\(output\['loss'\]\)"
    ):
        fabric.backward({"loss": weight.sum(), "acc": 1.0})  # type: ignore[arg-type]


def train(fabric: Any) -> None:
    return None


def test_launch_of_a_non_function_says_to_pass_the_function_itself() -> None:
    fabric = Fabric(accelerator="cpu")
    for value in (None, train(fabric)):
        with pytest.raises(
            TypeError, match=r"not a function\. Pass the function itself.*launch\(train, \*args\)"
        ):
            fabric.launch(value)  # type: ignore[arg-type]
    assert fabric.launch() is None  # no argument: every process continues the script
    assert fabric.launch(lambda f, x: x * 2, 21) == 42


def test_load_raw_accepts_weights_only_none(tmp_path: Any) -> None:
    fabric = Fabric(accelerator="cpu")
    source, target = nn.Linear(2, 1), nn.Linear(2, 1)
    torch.save(source.state_dict(), tmp_path / "raw.pt")
    fabric.load_raw(tmp_path / "raw.pt", target, weights_only=None)
    assert torch.equal(source.weight, target.weight)
    with pytest.raises(ValueError, match="weights_only=False"):
        fabric.load_raw(tmp_path / "raw.pt", target, weights_only=False)


def test_plugins_take_the_kinds_treadle_has() -> None:
    from treadle.strategies import ProcessEnvironment

    precision = MixedPrecision(torch.bfloat16, "cpu")
    fabric = Fabric(accelerator="cpu", plugins=[precision, ProcessEnvironment()])
    assert fabric.precision is precision
    assert Fabric(accelerator="cpu", plugins=precision).precision is precision
    with pytest.raises(TypeError, match=r"plugins=\.\.\.\) item 0 is .*not a plugin treadle has"):
        Fabric(accelerator="cpu", plugins=[object()])
    with pytest.raises(ValueError, match="sets the precision twice"):
        Fabric(accelerator="cpu", precision="bf16-mixed", plugins=[MixedPrecision(torch.bfloat16, "cpu")])
