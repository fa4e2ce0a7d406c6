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
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, Mapping):
        mapped = {key: map_tensors(value, fn) for key, value in data.items()}
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
        return type(data)(*(map_tensors(value, fn) for value in data))
    if isinstance(data, (list, tuple)):
        return type(data)(map_tensors(value, fn) for value in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        fields = dataclasses.fields(data)
        changes = {field.name: map_tensors(getattr(data, field.name), fn) for field in fields if field.init}
        result = dataclasses.replace(data, **changes)
        # replace() runs __post_init__, which would recompute fields declared with init=False: set those from
        # the mapped originals instead (object.__setattr__ also works on frozen dataclasses).
        for field in fields:
            if not field.init and hasattr(data, field.name):
                object.__setattr__(result, field.name, map_tensors(getattr(data, field.name), fn))
        return result
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return [map_tensors(value, fn) for value in data]
    return data


def move_to_device(data: Any, device: torch.device) -> Any:
    """Move every tensor in ``data`` to ``device``; copies from pinned memory are asynchronous."""

    def move(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device, non_blocking=tensor.is_pinned())

    return map_tensors(data, move)


def numbers_to_tensors(data: Any, device: torch.device) -> Any:
    """Turn int/float leaves of dicts, lists and tuples into float tensors, so collectives reduce them."""
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return torch.tensor(float(data), device=device)
    if isinstance(data, dict):
        return {key: numbers_to_tensors(value, device) for key, value in data.items()}
    if isinstance(data, (list, tuple)) and not hasattr(data, "_fields"):
        return type(data)(numbers_to_tensors(value, device) for value in data)
    return data
