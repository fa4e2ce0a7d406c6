"""Apply a function to the values of one type inside nested collections; move batches to a device."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from treadle.tree import map_leaves, move_to_device

__all__ = ["apply_to_collection", "move_data_to_device"]


def apply_to_collection(
    data: Any,
    dtype: type | tuple[type, ...],
    function: Callable[..., Any],
    *args: Any,
    wrong_dtype: type | tuple[type, ...] | None = None,
    include_none: bool = True,
    **kwargs: Any,
) -> Any:
    """`data` with ``function(value, *args, **kwargs)`` applied to every value of type `dtype` in it.

    Goes through dicts, lists, tuples, named tuples and dataclasses (containers keep their type); other
    values are returned unchanged.

    Args:
        wrong_dtype: values of this type are left alone even when they are also `dtype`.
        include_none: False drops the entries of mappings and sequences that are None afterwards.

    Example::

        detached = apply_to_collection(outputs, torch.Tensor, lambda t: t.detach())
    """

    def is_leaf(value: Any) -> bool:
        return isinstance(value, dtype) and not (wrong_dtype is not None and isinstance(value, wrong_dtype))

    result = map_leaves(data, lambda value: function(value, *args, **kwargs), is_leaf)
    return result if include_none else _drop_none(result)


def move_data_to_device(batch: Any, device: str | torch.device | int) -> Any:
    """`batch` with every tensor (and every object with a ``to`` method) moved to `device`."""
    return move_to_device(batch, torch.device(device))


def _drop_none(data: Any) -> Any:
    if isinstance(data, Mapping):
        kind: Any = type(data)
        kept = {key: _drop_none(value) for key, value in data.items() if value is not None}
        try:
            return kind(kept)
        except TypeError:
            return kept
    if isinstance(data, (list, tuple)) and not hasattr(data, "_fields"):
        return type(data)(_drop_none(value) for value in data if value is not None)
    return data
