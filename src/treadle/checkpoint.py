"""Checkpoint files: turning live objects into state, writing it atomically, and reading it back safely.

A checkpoint is one file written by ``torch.save`` holding a dict of named entries. Objects with a
``state_dict`` (modules, optimizers, schedulers, ``GradScaler``, your own classes) are stored as their state
dict, everything else as it is. Files are written to a temporary name in the same folder and renamed over
the target, so a crash mid-write never leaves a half-written checkpoint where a good one was. Files are read
with ``weights_only=True`` by default, so loading a checkpoint cannot execute code hidden in it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import IO, Any, cast

import torch

from treadle.errors import add_note
from treadle.files import atomic_open
from treadle.integrity import CorruptCheckpointError, check_loadable, checkpoint_size, verify_archive

__all__ = [
    "CorruptCheckpointError",
    "MissingKeysError",
    "atomic_save",
    "check_filter",
    "check_missing_keys",
    "check_path",
    "load_checkpoint",
    "load_raw",
    "restore_entries",
    "restoring",
    "save_checkpoint",
    "to_saveable",
    "unwrap_compiled",
]

# How many names an error message lists before it summarises the rest.
_MAX_LISTED = 10


def to_saveable(
    state: Mapping[str, Any],
    filter: Mapping[str, Callable[[str, Any], bool]] | None = None,
) -> dict[str, Any]:
    """Replace every stateful object in ``state`` by its state dict, ready for ``torch.save``.

    Args:
        state: Names mapped to what to save. Values with a callable ``state_dict`` become its result; a
            ``torch.compile`` wrapper is unwrapped first so the names carry no ``_orig_mod.`` prefix. Other
            values (ints, tensors, dicts, lists, ...) are kept as they are.
        filter: Optional map from a key of ``state`` to a predicate ``(name, value) -> bool``. The predicate
            sees each entry of that key's state dict and only entries for which it returns True are kept;
            when it keeps none, the key is left out.
            If the key's value is not a dict, the predicate sees ``(key, value)`` and decides whether the
            whole value is kept.

    Returns:
        A new dict with the same keys (minus values a filter dropped); ``state`` is not modified.

    Raises:
        TypeError: ``state`` or ``filter`` is not a mapping, or a filter value is not callable.
        ValueError: ``filter`` names a key that ``state`` does not have.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> saveable = to_saveable({"model": model, "step": 3}, filter={"model": lambda k, v: k == "weight"})
        >>> list(saveable["model"]), saveable["step"]
        (['weight'], 3)
    """
    if not isinstance(state, Mapping):
        raise TypeError(
            f"state must be a dict mapping names to objects, got {type(state).__name__}. "
            "Wrap what you save in a dict, e.g. {'model': model, 'optimizer': optimizer}."
        )
    predicates = check_filter(state, filter)
    saveable: dict[str, Any] = {}
    for key, value in state.items():
        converted = _state_of(value)
        keep = predicates.get(key)
        if keep is None:
            saveable[key] = converted
        elif isinstance(converted, Mapping):
            kept = _filtered(converted, keep)
            if kept:  # a filter that keeps no entry drops the key (as Lightning does)
                saveable[key] = kept
        elif keep(key, converted):
            saveable[key] = converted
    return saveable


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` with ``torch.save`` so that ``path`` holds either the old file or the complete new one.

    The data goes to a hidden temporary file in the same folder, is flushed to disk, and then renamed
    over ``path`` (a rename within one filesystem is atomic). Parent folders are created. If anything fails,
    including an interrupt, the temporary file is removed and an existing file at ``path`` is untouched.
    A process killed outright (SIGKILL, power loss) can leave a ``.<name>.<random>.tmp`` file behind, but
    never a partial file at ``path``.

    Args:
        obj: Anything ``torch.save`` accepts.
        path: Destination file.

    Raises:
        IsADirectoryError: ``path`` is an existing folder.
        Exception: Whatever ``torch.save`` or the filesystem raised; the old file is intact.

    Example:
        >>> atomic_save({"step": 10}, "checkpoints/last.pt")  # doctest: +SKIP
    """
    check_path(path, "the checkpoint path")
    check_loadable(obj)
    recorder: _Recorder | None = None
    try:
        with atomic_open(path, "wb") as file:
            recorder = _Recorder(file)
            torch.save(obj, cast("IO[bytes]", recorder))  # torch needs only write() and flush()
    except Exception as error:
        # torch's zip writer turns a failed write into "unexpected pos 704 vs 598"; the OSError the file
        # raised underneath (no space left, quota, I/O error) is the one to report, with the real path.
        cause = recorder.error if recorder is not None and recorder.error is not None else error
        if not isinstance(cause, OSError) or cause.errno is None:
            raise  # not from the filesystem, or already a message of ours (an existing folder at path)
        raise _write_error(os.fspath(path), cause, obj) from error


def check_path(path: Any, argument: str, *, file: bool = True) -> None:
    """Raise unless `path` is a str or ``os.PathLike`` of str (and, with `file`, does not end in a separator).

    Raises:
        TypeError: `path` is an int (a file descriptor), bytes or another type; names `argument`.
        ValueError: `file` is true and `path` ends with a folder separator.
    """
    shown = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(shown, str):
        raise TypeError(
            f"{argument} must be a path as str or pathlib.Path, got {path!r} ({type(path).__name__}). "
            "Example: 'checkpoints/last.ckpt'."
        )
    if file and shown.endswith(("/", os.sep)):
        raise ValueError(
            f"{argument} is {shown!r}, which ends with a folder separator, but a checkpoint is a file. Name "
            f"the file, e.g. {os.path.join(shown, 'last.ckpt')!r}, or drop the trailing {shown[-1]!r}."
        )


class _Recorder:
    """The temporary file as torch.save sees it: keeps the first OSError a write raised."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self.file.write(data))
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.file.flush()


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _write_error(shown: str, cause: OSError, obj: Any) -> OSError:
    reason = cause.strerror or str(cause)
    if cause.errno in (errno.ENOSPC, errno.EDQUOT):
        folder = os.path.dirname(os.path.abspath(shown))
        try:
            free = f", {_megabytes(shutil.disk_usage(folder).free)} free there"
        except OSError:
            free = ""
        needed = _megabytes(checkpoint_size(obj))
        reason = f"{reason[:1].lower()}{reason[1:]} (needed ~{needed}{free}); the previous file, if any, is kept"
    return OSError(cause.errno, f"could not write checkpoint {shown!r}: {reason}")


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Mapping[str, Any],
    filter: Mapping[str, Callable[[str, Any], bool]] | None = None,
) -> None:
    """Save ``state`` to ``path``: :func:`to_saveable` followed by :func:`atomic_save`.

    Args:
        path: Destination file; parent folders are created.
        state: Names mapped to objects; see :func:`to_saveable`.
        filter: Optional per-key predicates; see :func:`to_saveable`.

    Raises:
        TypeError, ValueError: A bad ``state`` or ``filter``; see :func:`to_saveable`.

    Example:
        >>> state = {"model": model, "optimizer": optimizer, "step": step}  # doctest: +SKIP
        >>> save_checkpoint("checkpoints/last.pt", state)  # doctest: +SKIP
    """
    atomic_save(to_saveable(state, filter), path)


def load_checkpoint(
    path: str | os.PathLike[str],
    state: MutableMapping[str, Any] | None = None,
    strict: bool = True,
    weights_only: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint, and restore the objects in ``state`` from it in place.

    Tensors are loaded onto the CPU. ``load_state_dict`` moves them to wherever each module's parameters
    and optimizer's state live, and loading straight to the saved device would put every rank's copy on
    the GPU the checkpoint was written from.

    Args:
        path: A file written by :func:`save_checkpoint` (or any ``torch.save`` of a dict).
        state: None to just return the checkpoint. Otherwise, for each key: an object with
            ``load_state_dict`` is restored from the entry of the same name (modules with ``strict``);
            any other value is replaced in ``state`` by the saved one.
        strict: If True, every key of ``state`` must be in the checkpoint and modules must match their
            saved state dict exactly. If False, missing keys are skipped and modules load leniently.
        weights_only: Refuse to unpickle anything but tensors, containers and plain Python values, so a
            malicious file cannot run code. Set False only for files you trust.

    Returns:
        The whole checkpoint if ``state`` is None; otherwise the entries that ``state`` did not consume.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.
        RuntimeError: The file is not a readable checkpoint (truncated or corrupt).
        pickle.UnpicklingError: ``weights_only=True`` refused a type stored in the file.
        MissingKeysError: (a KeyError) ``strict=True`` and keys of ``state`` are missing from the checkpoint.
        TypeError: ``state`` is not a dict, or the file does not hold a dict.

    Example:
        >>> state = {"model": model, "optimizer": optimizer, "step": 0}  # doctest: +SKIP
        >>> rest = load_checkpoint("checkpoints/last.pt", state)  # doctest: +SKIP
        >>> state["step"]  # the saved step, written back into the dict  # doctest: +SKIP
    """
    if state is not None and not isinstance(state, MutableMapping):
        raise TypeError(
            f"state must be a dict of the objects to restore (or None to get the checkpoint back), "
            f"got {type(state).__name__}. Example: load_checkpoint(path, {{'model': model}})."
        )
    checkpoint = _read(path, weights_only=weights_only)
    if state is None:
        return checkpoint  # type: ignore[no-any-return]
    shown = os.fspath(path)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            f"Checkpoint {shown!r} holds a {type(checkpoint).__name__}, not a dict of named entries, so it "
            "cannot restore state. Call load_checkpoint(path) without state to get the object back."
        )
    remainder = dict(checkpoint)
    check_missing_keys(shown, state, remainder, strict)
    return restore_entries(state, remainder, shown, strict=strict)


def load_raw(
    path: str | os.PathLike[str],
    obj: torch.nn.Module | torch.optim.Optimizer,
    strict: bool = True,
) -> None:
    """Load a bare state dict file, such as ``torch.save(model.state_dict(), path)``, into ``obj``.

    For checkpoints written by :func:`save_checkpoint` (a dict of named entries) use
    :func:`load_checkpoint` instead. The file is always read with ``weights_only=True``.

    Args:
        path: The state dict file.
        obj: The module or optimizer to restore in place (a ``torch.compile`` wrapper is fine).
        strict: For modules, require the file's keys to match the module's exactly.

    Raises:
        TypeError: ``obj`` is not a module or optimizer, or the file does not hold a dict.
        ValueError: The file holds a full checkpoint rather than a bare state dict.
        FileNotFoundError, IsADirectoryError, RuntimeError, pickle.UnpicklingError: As for
            :func:`load_checkpoint`.

    Example:
        >>> torch.save(pretrained.state_dict(), "backbone.pt")  # doctest: +SKIP
        >>> load_raw("backbone.pt", model)  # doctest: +SKIP
    """
    target = unwrap_compiled(obj)
    if not isinstance(target, (torch.nn.Module, torch.optim.Optimizer)):
        raise TypeError(
            f"load_raw(obj=...) takes a torch.nn.Module or torch.optim.Optimizer, got {type(obj).__name__}. "
            "For other objects use load_checkpoint(path, {'name': obj}) or "
            "obj.load_state_dict(load_checkpoint(path))."
        )
    shown = os.fspath(path)
    raw = _read(path, weights_only=True)
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"{shown!r} holds a {type(raw).__name__}, not a state dict. load_raw expects a file written by "
            "torch.save(model.state_dict(), path)."
        )
    _reject_full_checkpoint(shown, raw, target)
    try:
        if isinstance(target, torch.nn.Module):
            target.load_state_dict(raw, strict=strict)
        else:
            target.load_state_dict(dict(raw))
    except Exception as error:
        add_note(error, f"(while loading {shown!r} into {type(target).__name__})")
        raise


class MissingKeysError(KeyError):
    """``load_checkpoint(..., strict=True)`` was asked to restore keys the checkpoint does not have."""

    # KeyError's str() is the repr of its argument, which would wrap the message in quotes.
    def __str__(self) -> str:
        return str(self.args[0])


def check_missing_keys(path: str, state: Mapping[str, Any], saved: Mapping[str, Any], strict: bool) -> None:
    """With ``strict``, raise :class:`MissingKeysError` if ``state`` has keys that ``saved`` lacks.

    Shared by every strategy's loading, so a missing key reads the same whatever wrote the checkpoint.

    Args:
        path: The checkpoint, as the user passed it (for the message).
        state: What the user asked to restore.
        saved: The checkpoint's entries (only the keys are read).
        strict: False skips the check.

    Raises:
        MissingKeysError: ``strict`` and keys of ``state`` are not in ``saved``; the message lists both.

    Example:
        >>> check_missing_keys("last.pt", {"model": None}, {"model": {}}, strict=True)
    """
    missing = [key for key in state if key not in saved]
    if not strict or not missing:
        return
    hint = ""
    if saved and all(isinstance(value, torch.Tensor) for value in saved.values()):
        hint = (
            " It looks like a bare state dict (every entry is a tensor); load it into the module "
            "with load_raw(path, model) instead."
        )
    raise MissingKeysError(
        f"Checkpoint {path!r} has no entry for {_listing(missing)} of state. It holds: "
        f"{_listing(list(saved)) or 'nothing'}. Pass strict=False to skip missing keys, or remove "
        f"them from state.{hint}"
    )


def restore_entries(
    state: MutableMapping[str, Any],
    saved: dict[str, Any],
    path: str,
    *,
    strict: bool,
    keys: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Restore the ``keys`` of ``state`` (default: all) from ``saved``, popping each entry it uses.

    An object with ``load_state_dict`` (a ``torch.compile`` wrapper is unwrapped first) is restored in
    place, modules with ``strict``; any other value is replaced in ``state`` by the saved one. Keys that
    ``saved`` lacks are skipped (see :func:`check_missing_keys`).

    Args:
        state: What the user asked to restore; plain values are written back into it.
        saved: The checkpoint's entries; the ones used are removed.
        path: The checkpoint, as the user passed it (for the note on a failure).
        strict: Passed to modules' ``load_state_dict``.
        keys: The keys to restore, for callers that restore some entries themselves.

    Returns:
        ``saved``, minus the entries used.

    Raises:
        Exception: Whatever ``load_state_dict`` raised, with a note naming the key and the checkpoint.

    Example:
        >>> state = {"step": 0}
        >>> restore_entries(state, {"step": 5, "extra": 1}, "last.pt", strict=True), state
        ({'extra': 1}, {'step': 5})
    """
    for key in list(state) if keys is None else list(keys):
        if key not in saved:
            continue
        entry = saved.pop(key)
        target = unwrap_compiled(state[key])
        if not _has_method(target, "load_state_dict"):
            state[key] = entry
            continue
        with restoring(key, path):
            if isinstance(target, torch.nn.Module):
                target.load_state_dict(entry, strict=strict)
            else:
                target.load_state_dict(_numbered(key, entry, target, state))
    return saved


def _numbered(key: str, entry: Any, target: Any, state: Mapping[str, Any]) -> Any:
    # A sharded job's optimizer state names its parameters; an optimizer here numbers them, so it is
    # renumbered through the model it optimizes (found among the other entries of ``state``).
    from treadle.optimizer_keys import is_keyed_by_name, owner_of, positions_from_names

    if not isinstance(target, torch.optim.Optimizer) or not is_keyed_by_name(entry):
        return entry
    modules = [unwrap_compiled(v) for v in state.values() if isinstance(unwrap_compiled(v), torch.nn.Module)]
    owner = owner_of(key, target, modules)
    if owner is None:
        raise ValueError(
            "The saved optimizer state names its parameters (it was written by a sharded job), so the model "
            "it optimizes must be restored in the same call to map names to this optimizer's parameters. "
            "Pass both, e.g. fabric.load(path, {'model': model, 'optimizer': optimizer})."
        )
    return positions_from_names(entry, target, owner)


@contextlib.contextmanager
def restoring(key: str, path: str) -> Iterator[None]:
    """Add a note naming ``state[key]`` and the checkpoint to any exception raised in the block.

    The exception keeps its type (callers may catch the ValueError an optimizer raises), and the note
    says which entry failed.

    Example:
        >>> with restoring("model", "last.pt"):  # doctest: +SKIP
        ...     model.load_state_dict(entry)
    """
    try:
        yield
    except Exception as error:
        add_note(error, f"(while restoring state[{key!r}] from checkpoint {path!r})")
        raise


def check_filter(
    state: Mapping[str, Any], filter: Mapping[str, Callable[[str, Any], bool]] | None
) -> Mapping[str, Callable[[str, Any], bool]]:
    """Check a ``filter`` argument against ``state``; return it (``{}`` for None).

    Raises:
        TypeError: ``filter`` is not a mapping, or one of its values is not callable.
        ValueError: ``filter`` names keys that ``state`` does not have; the message lists the valid ones.

    Example:
        >>> list(check_filter({"model": None}, {"model": lambda name, value: True}))
        ['model']
    """
    if filter is None:
        return {}
    if not isinstance(filter, Mapping):
        raise TypeError(
            f"filter must be a dict mapping a key of state to a predicate (name, value) -> bool, got "
            f"{type(filter).__name__}. Example: filter={{'model': lambda name, value: 'lora' in name}}."
        )
    unknown = [key for key in filter if key not in state]
    if unknown:
        raise ValueError(
            f"filter has {_listing(unknown)}, which state does not have. state holds: "
            f"{_listing(list(state)) or 'nothing'}."
        )
    for key, predicate in filter.items():
        if not callable(predicate):
            raise TypeError(
                f"filter[{key!r}] must be a callable (name, value) -> bool, got {type(predicate).__name__}. "
                f"Example: filter={{{key!r}: lambda name, value: 'weight' in name}}."
            )
    return filter


def _filtered(entries: Mapping[str, Any], keep: Callable[[str, Any], bool]) -> dict[str, Any]:
    kept: OrderedDict[str, Any] = OrderedDict(
        (name, value) for name, value in entries.items() if keep(name, value)
    )
    # Module state dicts carry per-submodule versions in `_metadata`; BatchNorm and others read them when
    # loading old formats, so a filtered copy must keep them.
    metadata = getattr(entries, "_metadata", None)
    if metadata is not None:
        kept._metadata = metadata  # type: ignore[attr-defined]
    return kept


def _state_of(value: Any) -> Any:
    unwrapped = unwrap_compiled(value)
    if _has_method(unwrapped, "state_dict"):
        return unwrapped.state_dict()
    return value


def unwrap_compiled(obj: Any) -> Any:
    """The module inside a ``torch.compile`` wrapper (through any nesting); other objects unchanged."""
    # torch.compile wraps a module in an OptimizedModule whose state dict prefixes every name with
    # `_orig_mod.`; the original module gives clean names that also load into an uncompiled model.
    inner = getattr(obj, "_orig_mod", None)
    while inner is not None and inner is not obj:
        obj = inner
        inner = getattr(obj, "_orig_mod", None)
    return obj


def _has_method(obj: Any, name: str) -> bool:
    # A class (rather than an instance) also has the method, but calling it unbound would fail.
    return not isinstance(obj, type) and callable(getattr(obj, name, None))


def _read(path: str | os.PathLike[str], *, weights_only: bool) -> Any:
    shown = os.fspath(path)
    if shown.endswith(("/", os.sep)) and os.path.isfile(shown.rstrip("/" + os.sep)):
        raise NotADirectoryError(
            f"Checkpoint path {shown!r} ends with a folder separator but names a file; pass "
            f"{shown.rstrip('/' + os.sep)!r}."
        )
    if os.path.isdir(shown):
        raise IsADirectoryError(
            f"Checkpoint path {shown!r} is a folder. Pass the checkpoint file inside it, such as "
            f"{os.path.join(shown, 'last.pt')!r}."
        )
    if not os.path.exists(shown):
        raise FileNotFoundError(_missing_file_message(shown))
    verify_archive(shown)
    try:
        return torch.load(shown, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        if weights_only and _is_refusal(str(error)):
            raise pickle.UnpicklingError(_refusal_message(shown, str(error))) from error
        raise _unreadable(shown, error) from error
    except PermissionError:
        raise
    except Exception as error:
        # torch reports damage as whatever its parser tripped on: RuntimeError from the zip reader,
        # EOFError, KeyError or OSError from the pickle stream.
        raise _unreadable(shown, error) from error


def _missing_file_message(shown: str) -> str:
    absolute = os.path.abspath(shown)
    folder = os.path.dirname(absolute)
    message = f"Checkpoint {shown!r} does not exist"
    if absolute != shown:
        message += f" (looked for {absolute!r})"
    if not os.path.isdir(folder):
        return message + f". Its folder {folder!r} does not exist either; check the path."
    nearby = sorted(
        entry
        for entry in os.listdir(folder)
        if entry.endswith((".pt", ".pth", ".ckpt", ".bin")) and not entry.startswith(".")
    )
    if nearby:
        return message + f". Checkpoint files in that folder: {_listing(nearby)}."
    return message + ". That folder holds no .pt/.pth/.ckpt/.bin files; check the path."


def _is_refusal(message: str) -> bool:
    # torch raises the same "Weights only load failed" error for a forbidden type and for a garbled
    # pickle stream; only the former is a refusal the user can override.
    return "Weights only load failed" in message and "Unsupported operand" not in message


def _refusal_message(shown: str, message: str) -> str:
    refused = re.search(r"GLOBAL (\S+?) was not an allowed global", message)
    if refused is not None:
        what = f"contains a {refused.group(1)}, which"
    else:
        detail = re.search(r"WeightsUnpickler error: ([^\n]+)", message)
        what = f"contains something ({detail.group(1) if detail else 'an unsupported object'}) that"
    return (
        f"Checkpoint {shown!r} {what} torch.load(weights_only=True) refuses to unpickle, because loading "
        "it could run arbitrary code. If you trust this file, load it with weights_only=False; or allowlist "
        "the type with torch.serialization.add_safe_globals([...])."
    )


def _unreadable(shown: str, error: BaseException) -> RuntimeError:
    try:
        size = f"{os.path.getsize(shown)} bytes"
    except OSError:
        size = "size unknown"
    # torch's own messages run to several sentences of advice; its first sentence says what broke.
    text = str(error).strip()
    first_sentence = text.splitlines()[0].split(". ")[0][:200] if text else "(no message)"
    return RuntimeError(
        f"{shown!r} ({size}) is not a readable checkpoint (truncated or corrupt?): "
        f"{type(error).__name__}: {first_sentence}. treadle writes checkpoints atomically, so this usually "
        "comes from an interrupted copy or another writer; use an earlier checkpoint or copy it again."
    )


def _reject_full_checkpoint(shown: str, raw: Mapping[str, Any], target: Any) -> None:
    if isinstance(target, torch.optim.Optimizer):
        looks_raw = "param_groups" in raw
        expected = "an optimizer state dict (keys 'state' and 'param_groups')"
    else:
        looks_raw = not raw or any(isinstance(value, torch.Tensor) for value in raw.values())
        expected = "a module state dict (tensors by parameter name)"
    if looks_raw:
        return
    raise ValueError(
        f"{shown!r} is not {expected}; it holds {_listing(list(raw))}, which looks like a full checkpoint. "
        "load_raw only reads bare state dicts; restore a full checkpoint with "
        "load_checkpoint(path, {'model': model, ...})."
    )


def _listing(names: list[Any]) -> str:
    shown = ", ".join(repr(name) for name in names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f", ... ({len(names) - _MAX_LISTED} more)"
    return shown
