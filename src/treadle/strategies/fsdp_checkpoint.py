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
import pickle
import secrets
import shutil
import warnings
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch import nn

from treadle import checkpoint
from treadle.async_save import host_copy
from treadle.errors import add_note
from treadle.optimizer_keys import names_from_positions, owner_of

if TYPE_CHECKING:
    from treadle.async_save import BackgroundWriter

T = TypeVar("T")


class ShardingStrategy(Protocol):
    """What these functions need of a strategy that shards modules (FSDPStrategy, ModelParallelStrategy)."""

    @property
    def is_global_zero(self) -> bool: ...

    def barrier(self, name: str | None = None) -> None: ...

    def broadcast(self, obj: T, src: int = 0) -> T: ...

    def run_on_rank_zero(self, action: Callable[[], object], what: str) -> None: ...

    def sharded_modules(self) -> list[nn.Module]: ...


Filter = Mapping[str, Callable[[str, Any], bool]]
META_FILE = "meta.pt"
_FORMAT = "treadle-sharded-1"


def is_sharded_folder(path: str) -> bool:
    """Whether ``path`` is a folder that ``fabric.save`` wrote under a sharded strategy."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def save_sharded(
    strategy: ShardingStrategy, path: str, state: Mapping[str, Any], filter: Filter | None
) -> None:
    """Every rank writes its shards into a fresh folder; rank 0 then renames it to ``path``."""
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    sharded, meta, staging, token = _prepare_sharded(strategy, path, state, filter, background=False)
    target = os.path.abspath(path)
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


def save_sharded_async(
    strategy: ShardingStrategy,
    path: str,
    state: Mapping[str, Any],
    filter: Filter | None,
    writer: BackgroundWriter,
) -> None:
    """Stage every rank's shards in host memory, then write them in the background (DCP ``async_save``).

    DCP's own finishing step gathers every rank's result before rank 0 writes the folder's metadata, so
    when rank 0's write is done every shard is on disk: rank 0's thread then writes ``meta.pt`` and renames
    the folder into place, with no collective outside DCP's separate process group."""
    from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save

    sharded, meta, staging, token = _prepare_sharded(strategy, path, state, filter, background=True)
    target = os.path.abspath(path)
    try:
        future = dcp_async_save(sharded, checkpoint_id=staging, process_group=_checkpoint_group(strategy))
    except BaseException:
        if strategy.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    rank_zero = strategy.is_global_zero

    def finish() -> None:
        try:
            result: Any = getattr(future, "upload_completion", future)  # an AsyncSaveResponse or a Future
            result.result()
            if rank_zero:
                checkpoint.atomic_save(meta, os.path.join(staging, META_FILE))
                _replace_folder(staging, target, token)
        except BaseException:
            if rank_zero:
                shutil.rmtree(staging, ignore_errors=True)
            raise

    writer.submit(finish, path)


_checkpoint_groups: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _checkpoint_group(strategy: ShardingStrategy) -> Any:
    # A background save runs DCP's collectives from its own thread: on the training's process group they
    # could interleave with the training's collectives, so they get a group of their own (made once, by
    # every rank at its first background save).
    group = _checkpoint_groups.get(strategy)
    if group is None:
        import torch.distributed as dist

        group = _checkpoint_groups[strategy] = dist.new_group(backend="gloo")
    return group


def _prepare_sharded(
    strategy: ShardingStrategy,
    path: str,
    state: Mapping[str, Any],
    filter: Filter | None,
    *,
    background: bool,
) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """The sharded state dicts, rank 0's ``meta.pt`` content (copied off the live tensors for a
    ``background`` write), the staging folder (created) and its token."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    modules, optimizers, others = _classify(strategy, state)
    filter = checkpoint.check_filter(state, filter)
    sharded: dict[str, Any] = {key: get_model_state_dict(module) for key, module in modules.items()}
    for key, (optimizer, owner) in optimizers.items():
        sharded[key] = get_optimizer_state_dict(owner, optimizer)
    for key, keep in filter.items():
        if key in sharded:
            sharded[key] = {name: value for name, value in sharded[key].items() if keep(name, value)}

    # Only rank 0 writes meta.pt, so only it converts the unsharded entries. It does so before any shard is
    # written, and shares a failure (with the folder name it picks) so that every rank raises the same error.
    rest: dict[str, Any] = {}
    failure: Exception | None = None
    if strategy.is_global_zero:
        try:
            rest = checkpoint.to_saveable(others, {k: keep for k, keep in filter.items() if k in others})
            if background:
                rest = host_copy(rest)
        except Exception as error:
            failure = error
    token, shared = strategy.broadcast(
        (secrets.token_hex(6), _shareable(failure)) if strategy.is_global_zero else ("", None), src=0
    )
    if failure is not None:
        raise failure
    if shared is not None:
        add_note(shared, "(raised on rank 0 while preparing the checkpoint's unsharded entries)")
        raise shared

    parent, name = os.path.split(os.path.abspath(path))
    staging = os.path.join(parent, f".{name}.{token}.tmp")
    if strategy.is_global_zero:
        os.makedirs(staging, exist_ok=True)
    strategy.barrier("save_sharded")
    meta = {"format": _FORMAT, "sharded_keys": list(sharded), "state": rest}
    return sharded, meta, staging, token


def save_full(strategy: ShardingStrategy, path: str, state: Mapping[str, Any], filter: Filter | None) -> None:
    """Gather full state dicts on rank 0 (every rank takes part) and write one file there, atomically."""
    converted = gather_full(strategy, state, filter)
    strategy.run_on_rank_zero(
        lambda: checkpoint.save_checkpoint(path, converted, filter=filter), f"write the checkpoint {path!r}"
    )


def gather_full(
    strategy: ShardingStrategy, state: Mapping[str, Any], filter: Filter | None
) -> dict[str, Any]:
    """``state`` with each sharded model and its optimizer replaced by full state dicts (on CPU, complete on
    rank 0); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    modules, optimizers, _ = _classify(strategy, state)
    checkpoint.check_filter(state, filter)  # on every rank, so that a bad filter fails the same everywhere
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    converted = dict(state)
    for key, module in modules.items():
        converted[key] = get_model_state_dict(module, options=options)
    for key, (optimizer, owner) in optimizers.items():
        converted[key] = get_optimizer_state_dict(owner, optimizer, options=options)
    return converted


def load(
    strategy: ShardingStrategy, path: str, state: dict[str, Any] | None, *, strict: bool, weights_only: bool
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
    checkpoint.check_missing_keys(path, state, saved, strict)
    options = StateDictOptions(full_state_dict=True, strict=strict)
    for key, module in modules.items():
        if key in saved:
            with checkpoint.restoring(key, path):
                set_model_state_dict(module, saved.pop(key), options=options)
    for key, (optimizer, owner) in optimizers.items():
        if key in saved:
            with checkpoint.restoring(key, path):
                entry = names_from_positions(saved.pop(key), optimizer, owner)
                set_optimizer_state_dict(owner, optimizer, entry, options=options)
    return checkpoint.restore_entries(state, saved, path, strict=strict, keys=others)


def _load_sharded(
    strategy: ShardingStrategy, path: str, state: dict[str, Any] | None, *, strict: bool, weights_only: bool
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
    if not is_sharded_folder(path):
        raise FileNotFoundError(
            f"{path!r} is a folder but not a sharded treadle checkpoint (it has no {META_FILE}). Pass the "
            "folder that fabric.save wrote with FSDPStrategy(state_dict_type='sharded') or "
            "ModelParallelStrategy, or a checkpoint file."
        )
    meta = checkpoint.load_checkpoint(meta_path, None, weights_only=weights_only)
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != _FORMAT:
        raise ValueError(
            f"{path!r} is a sharded checkpoint in format {found!r}, but this treadle reads {_FORMAT!r}. Load "
            "it with the treadle version that wrote it and save it again, or save it there with "
            "FSDPStrategy(state_dict_type='full'), which every version reads."
        )
    sharded_keys = list(meta.get("sharded_keys", []))
    saved_rest: dict[str, Any] = dict(meta.get("state", {}))
    if state is None:
        raise ValueError(
            f"{path!r} is a sharded checkpoint: its tensors can only be loaded into objects. Pass them, e.g. "
            "fabric.load(path, {'model': model, 'optimizer': optimizer}); to turn it into one file, run "
            f"`treadle consolidate {path} out.pt`."
        )
    if not isinstance(state, dict):
        raise TypeError(
            f"Fabric.load(state=...) must be a dict of the objects to restore, got {type(state).__name__}."
        )
    modules, optimizers, others = _classify(strategy, state, into_shards=set(sharded_keys))
    available = {key: None for key in [*sharded_keys, *saved_rest]}
    checkpoint.check_missing_keys(path, state, available, strict)
    template: dict[str, Any] = {}
    for key, module in modules.items():
        if key in sharded_keys:
            template[key] = get_model_state_dict(module)
    for key, (optimizer, owner) in optimizers.items():
        if key in sharded_keys:
            # Creates the optimizer's state (zeros) if it never stepped, so there is a place to load into.
            template[key] = get_optimizer_state_dict(owner, optimizer)
    if template:
        import torch.distributed as dist

        single = not (dist.is_available() and dist.is_initialized())  # one process reads every shard
        with warnings.catch_warnings():
            # torch warns that it "assumes" a single process even when told so with no_dist=True.
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp_load(
                template,
                checkpoint_id=path,
                planner=DefaultLoadPlanner(allow_partial_load=not strict),
                no_dist=single,
            )
    options = StateDictOptions(strict=strict)
    for key, module in modules.items():
        if key in template:
            with checkpoint.restoring(key, path):
                set_model_state_dict(module, template[key], options=options)
    for key, (optimizer, owner) in optimizers.items():
        if key in template:
            with checkpoint.restoring(key, path):
                set_optimizer_state_dict(owner, optimizer, template[key], options=options)
    return checkpoint.restore_entries(state, saved_rest, path, strict=strict, keys=others)


def _classify(
    strategy: ShardingStrategy, state: Mapping[str, Any], into_shards: Collection[str] = ()
) -> tuple[dict[str, nn.Module], dict[str, tuple[torch.optim.Optimizer, nn.Module]], dict[str, Any]]:
    """Split ``state`` into sharded modules, optimizers of sharded modules (with their module), and the rest.

    The keys in ``into_shards`` were sharded when saved: their modules load shard by shard whatever this
    job's layout (a plain module in one process takes the full tensors), so they count as sharded here."""
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
        inner = checkpoint.unwrap_compiled(inner)
        if isinstance(inner, nn.Module) and (
            key in into_shards or isinstance(inner, FSDPModule) or is_sharded(inner)
        ):
            modules[key] = inner
        elif isinstance(inner, torch.optim.Optimizer):
            optimizers[key] = inner
        else:
            others[key] = value
    candidates = list(modules.values()) + [m for m in strategy.sharded_modules() if m not in modules.values()]
    owned: dict[str, tuple[torch.optim.Optimizer, nn.Module]] = {}
    for key, optimizer in optimizers.items():
        owner = owner_of(key, optimizer, candidates)
        if owner is None:
            others[key] = state[key]  # an optimizer of an unsharded module: an ordinary state dict
        else:
            owned[key] = (optimizer, owner)
    return modules, owned, others


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a DTensor (tensor parallel, or FSDP2 on a submodule)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in module.parameters())


def _shareable(error: Exception | None) -> Exception | None:
    """``error`` if it survives pickling (to send to the other ranks), else a RuntimeError carrying its text."""
    if error is None:
        return None
    try:
        copy = pickle.loads(pickle.dumps(error))
    except Exception:
        copy = None
    if isinstance(copy, Exception):
        return copy
    return RuntimeError(f"Rank 0 failed to prepare the checkpoint: {type(error).__name__}: {error}")


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


if TYPE_CHECKING:
    from treadle.strategies.parallel import ParallelStrategy as _MixinBase
else:
    _MixinBase = object


class ShardedCheckpoints(_MixinBase):
    """The checkpoint methods of the strategies that shard modules (mixed into FSDPStrategy and
    ModelParallelStrategy before ParallelStrategy): a sharded folder or one full file, as
    ``_writes_folder`` says, written now or in the background; ``load`` reads either, from any layout."""

    _sharded_modules: weakref.WeakSet[nn.Module]

    def _writes_folder(self) -> bool:
        raise NotImplementedError

    def save_checkpoint(self, path: str, state: Mapping[str, Any], filter: Filter | None = None) -> None:
        """Write a sharded folder or a full file (every rank must call it)."""
        self._require_group("save")
        if self._writes_folder():
            save_sharded(self, path, state, filter)
        else:
            save_full(self, path, state, filter)

    def save_checkpoint_async(
        self, path: str, state: Mapping[str, Any], filter: Filter | None, writer: BackgroundWriter
    ) -> None:
        """Stage the shards (or gather the full state) now and write them in the background."""
        self._require_group("save")
        if self._writes_folder():
            save_sharded_async(self, path, state, filter, writer)
        else:
            super().save_checkpoint_async(path, gather_full(self, state, filter), filter, writer)

    def load_checkpoint(
        self, path: str, state: dict[str, Any] | None, strict: bool, weights_only: bool
    ) -> dict[str, Any]:
        """Restore from a sharded folder or a full file, whichever ``path`` is (every rank must call it)."""
        self._require_group("load")
        return load(self, path, state, strict=strict, weights_only=weights_only)

    def sharded_modules(self) -> list[nn.Module]:
        """The modules this strategy has sharded (and that are still alive)."""
        return list(self._sharded_modules)

    def __getstate__(self) -> dict[str, Any]:
        # start_method="spawn" pickles the strategy into each new process before any module is sharded; a
        # mesh and weak references mean nothing in another process.
        from treadle.strategies.replaced_parameters import ReplacedParameters

        state = self.__dict__.copy()
        state.update(_mesh=None, _replaced=ReplacedParameters(), _sharded_modules=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sharded_modules = weakref.WeakSet()
