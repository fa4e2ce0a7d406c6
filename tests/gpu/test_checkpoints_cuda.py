"""CUDA paths of background saves and model parallelism. Skipped without a GPU; run by bench/gpu.sh."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from treadle import Fabric
from treadle.async_save import host_copy
from treadle.strategies import ModelParallelStrategy

pytestmark = pytest.mark.gpu


def test_host_copy_lands_in_pinned_memory_and_keeps_the_values() -> None:
    tensor = torch.randn(1024, 1024, device="cuda")
    copy = host_copy({"w": tensor, "nested": [tensor[0]]})
    assert copy["w"].device.type == "cpu" and copy["w"].is_pinned()
    assert torch.equal(copy["w"], tensor.cpu()) and torch.equal(copy["nested"][0], tensor[0].cpu())


def test_a_background_save_of_a_cuda_model_holds_the_state_of_its_call(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cuda", devices=1)
    model = fabric.setup(nn.Linear(256, 256))
    before = model.weight.detach().cpu().clone()
    fabric.save(tmp_path / "a.pt", {"model": model}, async_save=True)
    with torch.no_grad():
        model.weight.add_(1.0)
    fabric.wait_for_saves()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["model"]["weight"], before)


def test_model_parallel_on_one_gpu_trains_and_round_trips(tmp_path: Path) -> None:
    def parallelize(model: nn.Module, device_mesh: Any) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        return fully_shard(model, mesh=device_mesh["data_parallel"])

    strategy = ModelParallelStrategy(parallelize, timeout=timedelta(seconds=60))
    fabric = Fabric(accelerator="cuda", devices=1, strategy=strategy)
    fabric.launch()
    try:
        with fabric.init_module(empty_init=True):
            model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
        model = fabric.setup(model)
        optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-3))
        fabric.backward(model(torch.randn(4, 32, device="cuda")).sum())
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        fabric.save(tmp_path / "sharded", {"model": model, "optimizer": optimizer}, async_save=True)
        fabric.wait_for_saves()
        fabric.load(tmp_path / "sharded", {"model": model, "optimizer": optimizer})
    finally:
        strategy.teardown()
