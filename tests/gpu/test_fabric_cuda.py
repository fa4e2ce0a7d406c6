"""CUDA paths of the single-device runtime. Skipped without a GPU; run on the GPU machine by bench/gpu.sh."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from treadle import Fabric

pytestmark = pytest.mark.gpu


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 4))


def data(n: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    return [
        (torch.randn(32, 16, generator=generator), torch.randn(32, 4, generator=generator)) for _ in range(n)
    ]


def hand_written(precision: str) -> list[float]:
    device = torch.device("cuda")
    model = make_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda") if precision == "16-mixed" else None
    dtype = torch.float16 if precision == "16-mixed" else torch.bfloat16
    losses = []
    for x, y in data():
        x, y = x.to(device), y.to(device)
        with torch.autocast("cuda", dtype=dtype):
            out = model(x)
        loss = nn.functional.mse_loss(out.float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def with_fabric(precision: str) -> list[float]:
    fabric = Fabric(accelerator="cuda", devices=1, precision=precision)  # type: ignore[arg-type]
    model = make_model()
    model, optimizer = fabric.setup(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    loader = fabric.setup_dataloaders(
        DataLoader(TensorDataset(*map(torch.cat, zip(*data(), strict=True))), batch_size=32)
    )
    losses = []
    for x, y in loader:
        assert x.device.type == "cuda" and y.device.type == "cuda"
        loss = nn.functional.mse_loss(model(x), y)
        fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_matches_hand_written_loop(precision: str) -> None:
    assert with_fabric(precision) == pytest.approx(hand_written(precision), rel=1e-5, abs=1e-6)


def test_bf16_true_casts_module_and_inputs() -> None:
    fabric = Fabric(accelerator="cuda", devices=1, precision="bf16-true")
    model = fabric.setup(make_model())
    assert next(model.parameters()).dtype == torch.bfloat16
    out = model(torch.randn(2, 16, device="cuda"))  # float32 input is cast to bf16 on the way in
    assert out.dtype == torch.float32  # and outputs come back in the default dtype, as in Lightning


def test_init_module_on_device() -> None:
    fabric = Fabric(accelerator="cuda", devices=1, precision="bf16-true")
    with fabric.init_module():
        layer = nn.Linear(8, 8)
    assert layer.weight.device.type == "cuda" and layer.weight.dtype == torch.bfloat16
    with fabric.init_module(empty_init=True):
        big = nn.Linear(4096, 4096)
    assert big.weight.device.type == "cuda"


def test_grad_scaler_state_is_checkpointed(tmp_path: object) -> None:
    fabric = Fabric(accelerator="cuda", devices=1, precision="16-mixed")
    state = fabric.precision.state_dict()
    assert "scaler" in state and state["scaler"]["scale"] > 0
