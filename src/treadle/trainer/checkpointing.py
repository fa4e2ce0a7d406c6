"""What a Trainer checkpoint holds besides model and optimizer: each stateful callback's state, by key.

A callback is stateful when it has both ``state_dict()`` and ``load_state_dict(state)``. Its state is stored
under its ``state_key`` (``getattr(callback, "state_key", type(callback).__qualname__)``), so two stateful
callbacks must not share a key, and a resumed run finds each state again even if the callback list order
changed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from treadle.checkpoint import restoring

if TYPE_CHECKING:
    import torch

    from treadle.precision import Precision
    from treadle.trainer.state import SchedulerConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "REQUIRED_KEYS",
    "callback_state_key",
    "check_trainer_checkpoint",
    "collect_callback_states",
    "load_callback_states",
    "load_scheduler_states",
    "resolve_path",
    "restore_objects",
    "stateful_callbacks",
]

# Written into every checkpoint so that a future layout can be told apart and migrated.
CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("treadle_trainer", "progress", "model", "optimizer", "lr_schedulers", "rng", "callbacks")


def callback_state_key(callback: object) -> str:
    """The key a callback's state is stored under: its ``state_key`` attribute, else its class's qualname.

    Raises:
        TypeError: ``state_key`` is not a non-empty str.
    """
    key = getattr(callback, "state_key", None)
    if key is None:
        return type(callback).__qualname__
    if not isinstance(key, str) or not key:
        raise TypeError(
            f"{type(callback).__qualname__}.state_key is {key!r}; it must be a non-empty str naming this "
            "callback's entry in checkpoints."
        )
    return key


def stateful_callbacks(callbacks: Iterable[object]) -> dict[str, object]:
    """The callbacks that have ``state_dict`` and ``load_state_dict``, by state key, in order.

    Raises:
        ValueError: two of them have the same key (or one object is listed twice); the message names both
            positions and the fix.
    """
    found: dict[str, tuple[int, object]] = {}
    for position, callback in enumerate(callbacks):
        if not (
            callable(getattr(callback, "state_dict", None))
            and callable(getattr(callback, "load_state_dict", None))
        ):
            continue
        key = callback_state_key(callback)
        if key in found:
            first, earlier = found[key]
            if earlier is callback:
                raise ValueError(
                    f"Trainer(callbacks=...): callbacks[{first}] and callbacks[{position}] are the same "
                    f"{type(callback).__name__} object, listed twice: its hooks would run twice on it. List it once."
                )
            raise ValueError(
                f"Trainer(callbacks=...): callbacks[{first}] and callbacks[{position}] both store their checkpoint "
                f"state under the key {key!r}, so one would overwrite the other. Give them distinct "
                "`state_key`s (e.g. by naming one of them), or keep only one."
            )
        found[key] = (position, callback)
    return {key: callback for key, (_, callback) in found.items()}


def collect_callback_states(stateful: Mapping[str, object]) -> dict[str, Any]:
    """Each stateful callback's ``state_dict()``, by key."""
    return {key: callback.state_dict() for key, callback in stateful.items()}  # type: ignore[attr-defined]


def load_callback_states(stateful: Mapping[str, object], saved: Mapping[str, Any], path: str) -> None:
    """Give each callback its saved state; warn about states that are missing or have no callback.

    Nothing is dropped silently: a callback without saved state starts fresh and is named in a warning, and
    so is saved state that no callback of this Trainer claims.
    """
    for key, callback in stateful.items():
        if key in saved:
            callback.load_state_dict(saved[key])  # type: ignore[attr-defined]
    missing = [key for key in stateful if key not in saved]
    unexpected = [key for key in saved if key not in stateful]
    if missing:
        warnings.warn(
            f"Checkpoint {path!r} has no state for the callbacks {missing}; they start fresh. (It holds state "
            f"for: {sorted(saved) or 'none'}.) If a callback was renamed, give it its old `state_key`.",
            UserWarning,
            stacklevel=3,
        )
    if unexpected:
        warnings.warn(
            f"Checkpoint {path!r} holds state for callbacks this Trainer does not have: {unexpected}. That "
            "state is not restored. Add those callbacks (with the same `state_key`) to restore it.",
            UserWarning,
            stacklevel=3,
        )


def resolve_path(
    ckpt_path: str | os.PathLike[str], checkpoint_dir: str, callbacks: Iterable[object] = ()
) -> str | None:
    """The file ``fit(ckpt_path=...)`` means.

    ``"last"`` is the newest ``last.ckpt`` among ``checkpoint_dir`` and the folders of the callbacks that
    keep one (those with ``save_last=True`` and a ``dirpath``, as ModelCheckpoint has), or None (with a
    warning) while there is none, so a job script can always pass ``"last"``.

    Args:
        ckpt_path: a file path, or ``"last"``.
        checkpoint_dir: the Trainer's ``checkpoint_dir``.
        callbacks: the Trainer's callbacks; a ``ModelCheckpoint(dirpath=...)`` writes ``last.ckpt`` there.

    Returns:
        The path to load, or None to start from scratch.

    Example::

        path = resolve_path("last", "checkpoints", [ModelCheckpoint(dirpath="ckpts")])
    """
    path = os.fspath(ckpt_path)
    if path != "last":
        return path
    folders = [checkpoint_dir]
    for callback in callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if getattr(callback, "save_last", False) is True and isinstance(dirpath, (str, os.PathLike)):
            folders.append(os.fspath(dirpath))
    by_file = {
        os.path.abspath(os.path.join(f, "last.ckpt")): os.path.join(f, "last.ckpt") for f in reversed(folders)
    }
    candidates = list(reversed(by_file.values()))
    existing = [candidate for candidate in candidates if os.path.exists(candidate)]
    if existing:
        # Several folders may hold one (a callback's folder and the SIGTERM save in checkpoint_dir): the
        # newest is the state the previous run reached.
        return max(existing, key=os.path.getmtime)
    warnings.warn(
        f"fit(ckpt_path='last'): there is no {' or '.join(candidates)} yet; training starts from scratch.",
        stacklevel=5,
    )
    return None


def restore_objects(
    checkpoint: Mapping[str, Any],
    path: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedulers: Sequence[SchedulerConfig],
    precision: Precision,
) -> None:
    """Load model, optimizer, schedulers and grad scaler from a Trainer checkpoint, in place.

    Raises:
        ValueError: the optimizer differs from the one that wrote the checkpoint (its kind or settings, its
            parameter groups); the message names the file and what differs.
        RuntimeError: the model's shapes or names differ; torch's message gets a note naming the file.
    """
    with restoring("model", path):
        model.load_state_dict(checkpoint["model"])
    check_optimizer_state(checkpoint["optimizer"], optimizer, path)
    with restoring("optimizer", path):
        optimizer.load_state_dict(checkpoint["optimizer"])
    load_scheduler_states(schedulers, checkpoint["lr_schedulers"], path)
    precision.load_state_dict(checkpoint.get("precision", {}))


def check_optimizer_state(saved: Any, optimizer: torch.optim.Optimizer, path: str) -> None:
    """Raise before loading when `saved` cannot be the state of an optimizer like `optimizer`.

    torch would load an Adam state into an SGD optimizer and fail at the next step with a bare
    ``KeyError: 'momentum'``; comparing the settings of the parameter groups catches it at resume.

    Raises:
        ValueError: names the file, the optimizer class and the settings or group sizes that differ.
    """
    kind = type(getattr(optimizer, "optimizer", optimizer)).__name__
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    if not isinstance(groups, list):
        raise ValueError(f"Checkpoint {path!r}: state['optimizer'] is not an optimizer state dict.")
    current = optimizer.param_groups
    if len(groups) != len(current):
        raise ValueError(
            f"Checkpoint {path!r} has an optimizer with {len(groups)} parameter group(s); this {kind} has "
            f"{len(current)}. Resume with the configure_optimizers() that wrote the checkpoint."
        )
    for index, (old, new) in enumerate(zip(groups, current, strict=True)):
        old_keys, new_keys = set(old) - {"params"}, set(new) - {"params"}
        if old_keys != new_keys:
            only_saved, only_new = sorted(old_keys - new_keys), sorted(new_keys - old_keys)
            raise ValueError(
                f"Checkpoint {path!r} was written by a different optimizer than this {kind}: its parameter "
                f"group {index} has settings {only_saved} that {kind} lacks, and lacks {only_new}. Resume with "
                "the optimizer that wrote it (same class), or load only the model: "
                "fabric.load(path, {'model': model}, strict=False)."
            )
        if len(old["params"]) != len(new["params"]):
            raise ValueError(
                f"Checkpoint {path!r}: optimizer parameter group {index} holds {len(old['params'])} "
                f"parameters, this {kind}'s holds {len(new['params'])}. The model or the grouping in "
                "configure_optimizers() changed since the checkpoint was written."
            )


def load_scheduler_states(configs: Sequence[SchedulerConfig], saved: Sequence[Any], path: str) -> None:
    """Restore each scheduler from its saved state, in order.

    Raises:
        ValueError: the checkpoint has a different number of schedulers than ``configure_optimizers`` returned.
    """
    if len(saved) != len(configs):
        raise ValueError(
            f"Checkpoint {path!r} has {len(saved)} lr scheduler states but configure_optimizers() returned "
            f"{len(configs)} schedulers. Resume with the same optimizer configuration."
        )
    for config, state in zip(configs, saved, strict=True):
        config.scheduler.load_state_dict(state)


def check_trainer_checkpoint(checkpoint: Any, path: str) -> None:
    """Raise a clear error if ``checkpoint`` was not written by ``Trainer.save_checkpoint``.

    Raises:
        ValueError: it is not a dict, lacks Trainer entries, or has a newer format.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"Checkpoint {path!r} holds a {type(checkpoint).__name__}, not a Trainer checkpoint."
        )
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(
            f"Checkpoint {path!r} was not written by Trainer.save_checkpoint: it has no {missing}. "
            "To load only weights into a model, use fabric.load_raw or model.load_state_dict."
        )
    version = checkpoint["treadle_trainer"]
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise ValueError(
            f"Checkpoint {path!r} has Trainer format {version!r}; this treadle reads format {CHECKPOINT_FORMAT}. "
            "Upgrade treadle to resume it."
        )
