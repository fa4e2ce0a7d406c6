"""Optimizers made before sharding still hold the old parameters: a table that points them at the new ones.

Sharding (``fully_shard``, ``parallelize_module``, materialising a meta-device model) replaces every
parameter object, so ``fabric.setup(model, optimizer)`` needs to swap each old parameter in the optimizer's
groups for its sharded successor. Strategies that shard compose this table; they do not inherit it.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn


class ReplacedParameters:
    """Old parameter -> the parameter that replaced it, for re-targeting optimizers made before setup.

    Keyed by the old parameter's id. Both references are weak: the table must not keep the sharded
    parameters of a discarded model alive, and an entry removes itself when its old parameter dies (so its
    id cannot be reused while the entry exists).
    """

    def __init__(self) -> None:
        self._table: dict[int, tuple[weakref.ref[nn.Parameter], weakref.ref[nn.Parameter]]] = {}

    def record(self, before: dict[str, nn.Parameter], module: nn.Module) -> None:
        """Remember, by name, which of ``before``'s parameters ``module`` now holds a different object for."""
        for name, parameter in module.named_parameters():
            old = before.get(name)
            if old is not None and old is not parameter:
                self._remember(old, parameter)

    def retarget(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Point ``optimizer`` at the replacing parameters, in place.

        Raises:
            RuntimeError: ``optimizer`` already has state for parameters that were replaced; the optimizer
                is left unchanged.
        """
        swaps: list[tuple[list[Any], int, nn.Parameter]] = []
        for group in optimizer.param_groups:
            params = group["params"]
            for index, parameter in enumerate(params):
                entry = self._table.get(id(parameter))
                new = entry[1]() if entry is not None and entry[0]() is parameter else None
                if new is not None:
                    swaps.append((params, index, new))
        # Checked before anything changes: a half re-targeted optimizer would be worse than either state.
        if swaps and optimizer.state:
            raise RuntimeError(
                "This optimizer already has state (it stepped) for parameters that sharding has since replaced. "
                "Create the optimizer fresh, or set it up before training with it."
            )
        for params, index, new in swaps:
            params[index] = new
        return optimizer

    def __len__(self) -> int:
        return len(self._table)

    def _remember(self, old: nn.Parameter, new: nn.Parameter) -> None:
        key = id(old)
        table = self._table

        def forget(dead: weakref.ref[nn.Parameter]) -> None:
            entry = table.get(key)
            if entry is not None and entry[0] is dead:
                del table[key]

        table[key] = (weakref.ref(old, forget), weakref.ref(new))
