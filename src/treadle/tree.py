"""Apply a function to every tensor inside nested Python collections (batches, outputs, checkpoints)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


def map_tensors(data: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Return ``data`` with ``fn`` applied to every tensor found in dicts, lists, tuples, named tuples and dataclasses.

    Other leaves are returned unchanged, and containers keep their type.
    """
    return map_leaves(data, fn, _is_tensor)


def map_leaves(data: Any, fn: Callable[[Any], Any], is_leaf: Callable[[Any], bool]) -> Any:
    """Return ``data`` with ``fn`` applied to every value for which ``is_leaf`` holds, through the same
    containers as ``map_tensors``."""
    if is_leaf(data):
        return fn(data)
    if isinstance(data, Mapping):
        mapped = {key: map_leaves(value, fn, is_leaf) for key, value in data.items()}
        # defaultdict, OrderedDict and friends keep their type; a plain Mapping that cannot be rebuilt
        # from a dict becomes a dict rather than failing mid-step.
        kind: Any = type(data)
        try:
            if hasattr(data, "default_factory"):
                return kind(data.default_factory, mapped)
            return kind(mapped)
        except TypeError:
            return mapped
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # named tuple
        return type(data)(*(map_leaves(value, fn, is_leaf) for value in data))
    if isinstance(data, (list, tuple)):
        return type(data)(map_leaves(value, fn, is_leaf) for value in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        fields = dataclasses.fields(data)
        changes = {
            field.name: map_leaves(getattr(data, field.name), fn, is_leaf) for field in fields if field.init
        }
        result = dataclasses.replace(data, **changes)
        # replace() runs __post_init__, which would recompute fields declared with init=False: set those from
        # the mapped originals instead (object.__setattr__ also works on frozen dataclasses).
        for field in fields:
            if not field.init and hasattr(data, field.name):
                object.__setattr__(result, field.name, map_leaves(getattr(data, field.name), fn, is_leaf))
        return result
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return [map_leaves(value, fn, is_leaf) for value in data]
    return data


def move_to_device(data: Any, device: torch.device) -> Any:
    """Move every tensor in ``data`` to ``device``; copies from pinned memory are asynchronous."""

    def move(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device, non_blocking=tensor.is_pinned())

    return map_tensors(data, move)


def numbers_to_tensors(data: Any, device: torch.device) -> Any:
    """Turn int/float leaves of any container ``map_tensors`` walks into float tensors, so collectives reduce them."""
    return map_leaves(data, lambda number: torch.tensor(float(number), device=device), _is_number)


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
