"""Optimizer state keyed by parameter name (as sharded jobs write it) loads into a plain optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from treadle import Fabric
from treadle.optimizer_keys import is_keyed_by_name, names_from_positions, positions_from_names


def trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_names_and_positions_convert_both_ways() -> None:
    model, optimizer = trained()
    named = names_from_positions(optimizer.state_dict(), optimizer, model)
    assert is_keyed_by_name(named) and not is_keyed_by_name(optimizer.state_dict())
    assert list(named["state"]) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    back = positions_from_names(named, optimizer, model)
    assert back["param_groups"][0]["params"] == [0, 1, 2, 3]
    assert all(
        torch.equal(back["state"][i]["exp_avg"], optimizer.state_dict()["state"][i]["exp_avg"])
        for i in range(4)
    )


def test_a_name_keyed_file_loads_into_one_process_with_its_model(tmp_path: Path) -> None:
    model, optimizer = trained()
    path = tmp_path / "named.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": names_from_positions(optimizer.state_dict(), optimizer, model),
        },
        path,
    )
    fresh_model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    fresh = torch.optim.Adam(fresh_model.parameters(), lr=0.1)
    Fabric(accelerator="cpu").load(path, {"model": fresh_model, "optimizer": fresh})
    assert torch.equal(
        fresh.state_dict()["state"][2]["exp_avg"], optimizer.state_dict()["state"][2]["exp_avg"]
    )
    with pytest.raises(ValueError, match=r"Pass both, e.g. fabric.load\(path, \{'model': model, 'optimizer'"):
        Fabric(accelerator="cpu").load(path, {"optimizer": fresh}, strict=False)
    other = nn.Linear(4, 1)
    spanning = torch.optim.Adam([*fresh_model.parameters(), *other.parameters()])
    with pytest.raises(ValueError, match=r"state\['optimizer'\] optimizes parameters of 2 models"):
        Fabric(accelerator="cpu").load(
            path, {"model": fresh_model, "other": other, "optimizer": spanning}, strict=False
        )
