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
        changes = {
            field.name: map_tensors(getattr(data, field.name), fn)
            for field in dataclasses.fields(data)
            if field.init
        }
        return dataclasses.replace(data, **changes)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return [map_tensors(value, fn) for value in data]
    return data


def move_to_device(data: Any, device: torch.device) -> Any:
    """Move every tensor in ``data`` to ``device``; copies from pinned memory are asynchronous."""

    def move(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device, non_blocking=tensor.is_pinned())

    return map_tensors(data, move)
