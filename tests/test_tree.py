from __future__ import annotations

import collections
import dataclasses
import types
from typing import NamedTuple

import torch

from treadle.tree import map_tensors, move_to_device, numbers_to_tensors


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


@dataclasses.dataclass
class Normalised:
    pixels: torch.Tensor

    def __post_init__(self) -> None:  # accepts uint8 images and normalises them once
        self.pixels = self.pixels.float() / 255


@dataclasses.dataclass(frozen=True)
class Scaled:
    x: torch.Tensor
    scale: dataclasses.InitVar[float]
    doubled: torch.Tensor = dataclasses.field(init=False)

    def __post_init__(self, scale: float) -> None:
        object.__setattr__(self, "x", self.x * scale)
        object.__setattr__(self, "doubled", self.x * 2)


def test_dataclasses_are_rebuilt_without_running_init_again() -> None:
    images = Normalised(torch.full((2,), 255, dtype=torch.uint8))
    out = move_to_device(images, torch.device("cpu"))
    assert isinstance(out, Normalised) and out is not images and out.pixels.tolist() == [1.0, 1.0]
    scaled = map_tensors(Scaled(torch.ones(1), 3.0), lambda t: t + 1)  # an InitVar and an init=False field
    assert isinstance(scaled, Scaled) and float(scaled.x) == 4.0 and float(scaled.doubled) == 7.0


@dataclasses.dataclass
class Masked:
    x: torch.Tensor

    def __post_init__(self) -> None:
        self.mask = self.x > 0  # derived: must move with x


def test_attributes_a_dataclass_derives_move_with_its_fields() -> None:
    batch = Masked(torch.tensor([1.0, -1.0]))
    meta = torch.device("meta")
    out = move_to_device(batch, meta)
    assert out.x.device == meta and out.mask.device == meta
    assert batch.mask.device.type == "cpu"  # the original is untouched


class Graph:
    """A batch type that moves itself, like a graph library's ``Data``."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def to(self, device: torch.device) -> Graph:
        return Graph(self.x.to(device))


def test_move_to_device_calls_the_own_to_of_other_objects() -> None:
    meta = torch.device("meta")  # stands in for an accelerator on a CPU-only machine
    layer = torch.nn.Linear(1, 1)
    out = move_to_device(
        {"graph": Graph(torch.ones(2)), "x": torch.ones(1), "kind": Graph, "model": layer}, meta
    )
    assert isinstance(out["graph"], Graph) and out["graph"].x.device == meta and out["x"].device == meta
    assert out["kind"] is Graph  # a class is not an object to move
    assert (
        out["model"] is layer and layer.weight.device == meta
    )  # in place, as Fabric.to_device moves a module
