"""Optimizer state keyed by parameter position (``torch.optim``) or by parameter name (sharded checkpoints).

``optimizer.state_dict()`` numbers parameters in the order of its param groups; ``torch.distributed``'s
state-dict functions, and so treadle's sharded and full FSDP checkpoints, key them by the parameter's name
in the model. A checkpoint can be written one way and loaded the other when the job changes shape (FSDP on
two ranks -> one process), so loading converts whichever way the optimizer at hand needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn


def is_keyed_by_name(saved: Any) -> bool:
    """Whether ``saved`` is an optimizer state dict whose parameters are named (not numbered)."""
    if not isinstance(saved, Mapping):
        return False
    state, groups = saved.get("state"), saved.get("param_groups")
    keys = list(state) if isinstance(state, Mapping) else []
    if isinstance(groups, list):
        keys += [p for group in groups if isinstance(group, Mapping) for p in group.get("params", [])]
    return bool(keys) and all(isinstance(key, str) for key in keys)


def owner_of(key: str, optimizer: torch.optim.Optimizer, modules: Iterable[nn.Module]) -> nn.Module | None:
    """The module among ``modules`` whose parameters ``state[key]``, an optimizer, steps (None if none).

    Raises:
        ValueError: it steps parameters of several of them.
    """
    wanted = {id(p) for group in optimizer.param_groups for p in group["params"]}
    owners = [module for module in modules if wanted & {id(p) for p in module.parameters()}]
    if len(owners) > 1:
        raise ValueError(
            f"state[{key!r}] optimizes parameters of {len(owners)} models; a checkpoint can only match an "
            "optimizer to one. Use one optimizer per model."
        )
    return owners[0] if owners else None


def names_from_positions(saved: Any, optimizer: torch.optim.Optimizer, owner: nn.Module) -> Any:
    """``saved`` keyed by the names ``owner`` gives the optimizer's parameters (unchanged if already so)."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get("state"), Mapping):
        return saved
    if not any(isinstance(key, int) for key in saved["state"]):
        return saved
    names = {id(p): name for name, p in owner.named_parameters()}
    ordered = [names.get(id(p)) for group in optimizer.param_groups for p in group["params"]]
    if None in ordered:
        return saved

    def name_of(index: int) -> str:
        if not 0 <= index < len(ordered):
            raise ValueError(
                f"The saved optimizer state refers to parameter {index}, but this optimizer has {len(ordered)}."
            )
        return str(ordered[index])

    groups = [
        dict(group, params=[name_of(i) for i in group["params"]]) for group in saved.get("param_groups", [])
    ]
    return {"state": {name_of(i): value for i, value in saved["state"].items()}, "param_groups": groups}


def positions_from_names(saved: Mapping[str, Any], optimizer: torch.optim.Optimizer, owner: nn.Module) -> Any:
    """``saved`` (keyed by parameter names) numbered in the order of ``optimizer``'s param groups, as
    ``optimizer.load_state_dict`` wants it.

    Raises:
        ValueError: a saved name is not a parameter of ``optimizer`` in ``owner``, or the groups differ.
    """
    names = {id(p): name for name, p in owner.named_parameters()}
    ordered = [names.get(id(p)) for group in optimizer.param_groups for p in group["params"]]
    if None in ordered:
        raise ValueError(
            "The saved optimizer state names its parameters, but this optimizer also steps parameters outside "
            f"the model {type(owner).__name__}, which have no name there. Create the optimizer over that "
            "model's parameters only, as in the run that saved it."
        )
    position = {name: index for index, name in enumerate(ordered)}
    unknown = sorted(
        {str(name) for name in saved.get("state", {}) if name not in position}
        | {
            str(name)
            for group in saved.get("param_groups", [])
            for name in group.get("params", [])
            if name not in position
        }
    )
    if unknown:
        raise ValueError(
            f"The saved optimizer state names parameters this optimizer does not hold: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}. Create the optimizer over the same parameters as the run "
            "that saved it (same model, same parameter groups)."
        )
    groups = [
        dict(group, params=[position[name] for name in group["params"]]) for group in saved["param_groups"]
    ]
    return {
        "state": {position[name]: value for name, value in saved.get("state", {}).items()},
        "param_groups": groups,
    }
