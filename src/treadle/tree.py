"""Apply a function to every tensor inside nested Python collections (batches, outputs, checkpoints)."""

from __future__ import annotations

import copy
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
        # A shallow copy with the fields swapped in, rather than dataclasses.replace: replace() runs __init__
        # and __post_init__ again, which would normalise a field twice and cannot rebuild InitVars.
        # object.__setattr__ also works on frozen dataclasses.
        # Attributes __post_init__ derived from the fields (a mask, a cache) are mapped too, so that none of
        # them still points at the unmoved tensors.
        result = copy.copy(data)
        names = [field.name for field in dataclasses.fields(data)]
        names += [name for name in getattr(data, "__dict__", {}) if name not in names]
        for name in names:
            if hasattr(data, name):  # an init=False field without a default may never have been set
                object.__setattr__(result, name, map_leaves(getattr(data, name), fn, is_leaf))
        return result
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return [map_leaves(value, fn, is_leaf) for value in data]
    return data


def move_to_device(data: Any, device: torch.device) -> Any:
    """Move every tensor in ``data`` to ``device``, and every other object with its own ``to`` method.

    Objects such as a custom batch class, a ``PackedSequence`` or a graph library's ``Data`` are moved by
    calling ``obj.to(device)`` and keeping what it returns; a module inside ``data`` is moved in place, as
    ``Fabric.to_device`` moves a module. Tensor copies from pinned memory are asynchronous.

    Example:
        >>> move_to_device({"x": torch.ones(2)}, torch.device("cpu"))["x"].device
        device(type='cpu')
    """

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=value.is_pinned())
        # Only the device: a user's own `to` need not accept non_blocking.
        return value.to(device)

    return map_leaves(data, move, _is_movable)


def numbers_to_tensors(data: Any, device: torch.device) -> Any:
    """Turn int/float leaves of any container ``map_tensors`` walks into float tensors, so collectives reduce them."""
    return map_leaves(data, lambda number: torch.tensor(float(number), device=device), _is_number)


def scalars_to_tensors(data: Any, device: torch.device) -> Any:
    """Turn Python numbers and bools (and numpy arrays and scalars) of any container ``map_tensors`` walks
    into tensors on ``device``, keeping their kind: int -> int64, float -> float32, bool -> bool.

    This is what collectives that keep values apart (``all_gather``) need; ``numbers_to_tensors`` is for
    reductions, where everything becomes float.
    """
    return map_leaves(data, lambda value: torch.as_tensor(value, device=device), _is_scalar)


def _is_scalar(value: Any) -> bool:
    # numpy without importing it: its arrays and scalars all carry a dtype and come from the numpy package.
    return isinstance(value, (int, float)) or (
        type(value).__module__ == "numpy" and hasattr(value, "dtype") and not isinstance(value, type)
    )


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _is_movable(value: Any) -> bool:
    # A class has its methods as attributes too: only instances are moved.
    return isinstance(value, torch.Tensor) or (
        not isinstance(value, type) and callable(getattr(value, "to", None))
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
