"""Checkpoints of sharded models: a folder written by every rank, or one full file written by rank 0.

A sharded checkpoint is a folder holding ``torch.distributed.checkpoint`` files for the sharded entries
(models and optimizers) and ``meta.pt`` for everything else. It is written to a hidden folder beside the
target and renamed into place once every rank has finished, so an interrupted save never replaces a good
checkpoint. A full checkpoint is the same single file that ``treadle.checkpoint`` writes for one process,
with parameter names (not positions) as the keys of optimizer state; DDP and single-device checkpoints
load into a sharded model too.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from treadle import checkpoint

if TYPE_CHECKING:
    from treadle.strategies.fsdp import FSDPStrategy

Filter = Mapping[str, Callable[[str, Any], bool]]
META_FILE = "meta.pt"
_FORMAT = "treadle-sharded-1"


def save_sharded(strategy: FSDPStrategy, path: str, state: Mapping[str, Any], filter: Filter | None) -> None:
    """Every rank writes its shards into a fresh folder; rank 0 then renames it to ``path``."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    modules, optimizers, others = _classify(strategy, state)
    _check_filter_keys(state, filter)
    sharded: dict[str, Any] = {key: get_model_state_dict(module) for key, module in modules.items()}
    for key, (optimizer, owner) in optimizers.items():
        sharded[key] = get_optimizer_state_dict(owner, optimizer)
    for key, keep in (filter or {}).items():
        if key in sharded:
            sharded[key] = {name: value for name, value in sharded[key].items() if keep(name, value)}
    rest_filter = {key: keep for key, keep in (filter or {}).items() if key in others}
    rest = checkpoint.to_saveable(others, rest_filter)

    target = os.path.abspath(path)
    parent, name = os.path.split(target)
    # Every rank must write into the same new folder; rank 0 picks its name.
    token = strategy.broadcast(secrets.token_hex(6) if strategy.is_global_zero else "", src=0)
    staging = os.path.join(parent, f".{name}.{token}.tmp")
    if strategy.is_global_zero:
        os.makedirs(staging, exist_ok=True)
    strategy.barrier("save_sharded")
    meta = {"format": _FORMAT, "sharded_keys": list(sharded), "state": rest}
    try:
        dcp_save(sharded, checkpoint_id=staging)
        strategy.run_on_rank_zero(
            lambda: checkpoint.atomic_save(meta, os.path.join(staging, META_FILE)),
            f"write {META_FILE} in {staging!r}",
        )
        strategy.run_on_rank_zero(
            lambda: _replace_folder(staging, target, token), f"move the checkpoint to {path!r}"
        )
    except BaseException:
        if strategy.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)
        raise


def save_full(strategy: FSDPStrategy, path: str, state: Mapping[str, Any], filter: Filter | None) -> None:
    """Gather full state dicts on rank 0 (every rank takes part) and write one file there, atomically."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    modules, optimizers, _ = _classify(strategy, state)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    converted = dict(state)
    for key, module in modules.items():
        converted[key] = get_model_state_dict(module, options=options)
    for key, (optimizer, owner) in optimizers.items():
        converted[key] = get_optimizer_state_dict(owner, optimizer, options=options)
    strategy.run_on_rank_zero(
        lambda: checkpoint.save_checkpoint(path, converted, filter=filter), f"write the checkpoint {path!r}"
    )


def load(
    strategy: FSDPStrategy, path: str, state: dict[str, Any] | None, *, strict: bool, weights_only: bool
) -> dict[str, Any]:
    """Restore ``state`` from a sharded folder or a full file; return the entries ``state`` did not ask for."""
    if os.path.isdir(path):
        return _load_sharded(strategy, path, state, strict=strict, weights_only=weights_only)
    if state is None:
        return checkpoint.load_checkpoint(path, None, weights_only=weights_only)
    if not isinstance(state, dict):
        raise TypeError(
            f"Fabric.load(state=...) must be a dict of the objects to restore, got {type(state).__name__}."
        )
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    saved = checkpoint.load_checkpoint(path, None, weights_only=weights_only)
    modules, optimizers, others = _classify(strategy, state)
    _check_missing(path, state, saved, strict)
    options = StateDictOptions(full_state_dict=True, strict=strict)
    for key, module in modules.items():
        if key in saved:
            _note_errors(key, path, set_model_state_dict, module, saved.pop(key), options=options)
    for key, (optimizer, owner) in optimizers.items():
        if key in saved:
            entry = _keyed_by_name(saved.pop(key), optimizer, owner)
            _note_errors(key, path, set_optimizer_state_dict, owner, optimizer, entry, options=options)
    return _restore_others(others, state, saved, path, strict)


def _load_sharded(
    strategy: FSDPStrategy, path: str, state: dict[str, Any] | None, *, strict: bool, weights_only: bool
) -> dict[str, Any]:
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(
            f"{path!r} is a folder but not a sharded treadle checkpoint (it has no {META_FILE}). Pass the "
            "folder that fabric.save wrote with FSDPStrategy(state_dict_type='sharded'), or a checkpoint file."
        )
    meta = checkpoint.load_checkpoint(meta_path, None, weights_only=weights_only)
    sharded_keys = list(meta.get("sharded_keys", []))
    saved_rest: dict[str, Any] = dict(meta.get("state", {}))
    if state is None:
        raise ValueError(
            f"{path!r} is a sharded checkpoint: its tensors can only be loaded into objects. Pass them, e.g. "
            "fabric.load(path, {'model': model, 'optimizer': optimizer}); to turn it into one file, use "
            "torch.distributed.checkpoint.format_utils.dcp_to_torch_save."
        )
    if not isinstance(state, dict):
        raise TypeError(
            f"Fabric.load(state=...) must be a dict of the objects to restore, got {type(state).__name__}."
        )
    modules, optimizers, others = _classify(strategy, state)
    available = {key: None for key in [*sharded_keys, *saved_rest]}
    _check_missing(path, state, available, strict)
    template: dict[str, Any] = {}
    for key, module in modules.items():
        if key in sharded_keys:
            template[key] = get_model_state_dict(module)
    for key, (optimizer, owner) in optimizers.items():
        if key in sharded_keys:
            # Creates the optimizer's state (zeros) if it never stepped, so there is a place to load into.
            template[key] = get_optimizer_state_dict(owner, optimizer)
    if template:
        dcp_load(template, checkpoint_id=path, planner=DefaultLoadPlanner(allow_partial_load=not strict))
    options = StateDictOptions(strict=strict)
    for key, module in modules.items():
        if key in template:
            _note_errors(key, path, set_model_state_dict, module, template[key], options=options)
    for key, (optimizer, owner) in optimizers.items():
        if key in template:
            _note_errors(
                key, path, set_optimizer_state_dict, owner, optimizer, template[key], options=options
            )
    return _restore_others(others, state, saved_rest, path, strict)


def _classify(
    strategy: FSDPStrategy, state: Mapping[str, Any]
) -> tuple[dict[str, nn.Module], dict[str, tuple[torch.optim.Optimizer, nn.Module]], dict[str, Any]]:
    """Split ``state`` into sharded modules, optimizers of sharded modules (with their module), and the rest."""
    from torch.distributed.fsdp import FSDPModule

    from treadle.wrappers import FabricModule, FabricOptimizer

    if not isinstance(state, Mapping):
        raise TypeError(
            f"state must be a dict mapping names to objects, got {type(state).__name__}, e.g. "
            "{'model': model, 'optimizer': optimizer}."
        )
    modules: dict[str, nn.Module] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    others: dict[str, Any] = {}
    for key, value in state.items():
        inner = value.module if isinstance(value, FabricModule) else value
        inner = value.optimizer if isinstance(value, FabricOptimizer) else inner
        if isinstance(inner, FSDPModule) and isinstance(inner, nn.Module):
            modules[key] = inner
        elif isinstance(inner, torch.optim.Optimizer):
            optimizers[key] = inner
        else:
            others[key] = value
    candidates = list(modules.values()) + [m for m in strategy.sharded_modules() if m not in modules.values()]
    owned: dict[str, tuple[torch.optim.Optimizer, nn.Module]] = {}
    for key, optimizer in optimizers.items():
        owner = _owner(key, optimizer, candidates)
        if owner is None:
            others[key] = state[key]  # an optimizer of an unsharded module: an ordinary state dict
        else:
            owned[key] = (optimizer, owner)
    return modules, owned, others


def _owner(key: str, optimizer: torch.optim.Optimizer, modules: list[nn.Module]) -> nn.Module | None:
    wanted = {id(p) for group in optimizer.param_groups for p in group["params"]}
    owners = [m for m in modules if wanted & {id(p) for p in m.parameters()}]
    if len(owners) > 1:
        raise ValueError(
            f"state[{key!r}] optimizes parameters of {len(owners)} sharded models; a checkpoint can only "
            "match an optimizer to one. Use one optimizer per model."
        )
    return owners[0] if owners else None


def _keyed_by_name(saved: Any, optimizer: torch.optim.Optimizer, owner: nn.Module) -> Any:
    """Optimizer state saved by DDP or one process is keyed by parameter position; FSDP wants names."""
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


def _restore_others(
    others: dict[str, Any], state: dict[str, Any], saved: dict[str, Any], path: str, strict: bool
) -> dict[str, Any]:
    for key, target in others.items():
        if key not in saved:
            continue
        entry = saved.pop(key)
        load_state_dict = getattr(target, "load_state_dict", None)
        if callable(load_state_dict) and not isinstance(target, type):
            extra = {"strict": strict} if isinstance(target, nn.Module) else {}
            _note_errors(key, path, load_state_dict, entry, **extra)
        else:
            state[key] = entry
    return saved


def _check_missing(path: str, state: Mapping[str, Any], saved: Mapping[str, Any], strict: bool) -> None:
    missing = [key for key in state if key not in saved]
    if strict and missing:
        raise KeyError(
            f"Checkpoint {path!r} has no entry for {', '.join(map(repr, missing))} of state. It holds: "
            f"{', '.join(map(repr, saved)) or 'nothing'}. Pass strict=False to skip missing keys."
        )


def _check_filter_keys(state: Mapping[str, Any], filter: Filter | None) -> None:
    unknown = [key for key in (filter or {}) if key not in state]
    if unknown:
        raise KeyError(f"filter has {', '.join(map(repr, unknown))}, which state does not have.")


def _note_errors(key: str, path: str, restore: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        restore(*args, **kwargs)
    except Exception as error:
        add_note = getattr(error, "add_note", None)  # Python 3.11+
        if callable(add_note):
            add_note(f"(while restoring state[{key!r}] from checkpoint {path!r})")
        raise


def _replace_folder(staging: str, target: str, token: str) -> None:
    # Two renames: the old checkpoint moves aside, the new one takes its name, then the old one goes. At
    # every moment one complete checkpoint exists under a name that says which it is.
    parent, name = os.path.split(target)
    previous = os.path.join(parent, f".{name}.{token}.old")
    had_previous = os.path.lexists(target)
    if had_previous:
        os.replace(target, previous)
    os.replace(staging, target)
    if had_previous:
        if os.path.isdir(previous) and not os.path.islink(previous):
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.unlink(previous)
