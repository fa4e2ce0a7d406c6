from __future__ import annotations

import collections
import dataclasses
import types
from typing import NamedTuple

import torch

from treadle.tree import map_tensors, numbers_to_tensors


class Pair(NamedTuple):
    a: torch.Tensor
    b: int


@dataclasses.dataclass(frozen=True)
class Frozen:
    x: torch.Tensor
    n: float


def test_map_tensors_keeps_every_container_type() -> None:
    counts: collections.defaultdict[str, torch.Tensor] = collections.defaultdict(lambda: torch.zeros(1))
    counts["k"] = torch.ones(1)
    data = {
        "pair": Pair(torch.ones(2), 3),
        "frozen": Frozen(torch.ones(1), 1.5),
        "list": [torch.ones(1), "text"],
        "tuple": (torch.ones(1),),
        "counts": counts,
        "range": range(2),
    }
    out = map_tensors(data, lambda t: t * 2)
    assert (
        isinstance(out["pair"], Pair)
        and torch.equal(out["pair"].a, torch.full((2,), 2.0))
        and out["pair"].b == 3
    )
    assert isinstance(out["frozen"], Frozen) and float(out["frozen"].x) == 2.0
    assert out["list"][1] == "text" and isinstance(out["tuple"], tuple)
    assert isinstance(out["counts"], collections.defaultdict) and float(out["counts"]["missing"]) == 0.0
    assert out["range"] == [0, 1]  # a generic Sequence comes back as a list


def test_numbers_become_tensors_wherever_map_tensors_walks() -> None:
    data = {
        "pair": Pair(torch.ones(1), 3),
        "frozen": Frozen(torch.ones(1), 1.5),
        "view": types.MappingProxyType({"n": 2}),
    }
    out = numbers_to_tensors(data, torch.device("cpu"))
    assert isinstance(out["pair"].b, torch.Tensor) and float(out["pair"].b) == 3.0
    assert isinstance(out["frozen"].n, torch.Tensor) and out["frozen"].n.dtype == torch.float32
    assert float(out["view"]["n"]) == 2.0
    assert numbers_to_tensors(True, torch.device("cpu")) is True  # booleans are not numbers to reduce
