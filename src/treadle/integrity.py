"""Checkpoints that do not lie: refuse at save what a safe load would refuse, verify every byte on load.

``torch.save`` writes a zip archive in which every record carries a CRC-32 of its bytes, but ``torch.load``
never checks them: a flipped bit in a tensor loads silently as a wrong weight. :func:`verify_archive`
checks them all (about 30 ms per 100 MB on a laptop core; ``bench/bench_checkpoint.py`` measures it) and
names the state key whose bytes changed. :func:`check_loadable` walks a state before it is written and
names the first value that ``torch.load(weights_only=True)`` would refuse, with how to store it instead.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import types
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["CorruptCheckpointError", "check_loadable", "verify_archive"]

# Leaves weights_only=True always accepts; anything else is tried once through a real safe load.
_PLAIN = (int, float, bool, complex, str, bytes, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)
_CONTAINERS = (dict, collections.OrderedDict, collections.defaultdict)
_CHUNK = 1 << 20


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file's bytes differ from what was written (a disk, copy or transfer error)."""


def check_loadable(state: Any, root: str = "state") -> None:
    """Raise if `state` holds a value ``torch.load(weights_only=True)`` would refuse to read back.

    Raises:
        TypeError: names the value's key path (``state['cfg']``), its type and how to store it instead.

    Example::

        check_loadable({"cfg": vars(args), "step": 3})  # fine; {"cfg": args} raises
    """
    safe_types: set[type] = set()  # a type that loaded once loads again: test each type once per state
    for where, value in _leaves(state, root):
        if isinstance(value, _PLAIN) or type(value) in safe_types:
            continue
        if _loads_safely(value):
            safe_types.add(type(value))
            continue
        kind = type(value)
        raise TypeError(
            f"Cannot save {where}: a value of type {kind.__module__}.{kind.__qualname__} would not load back, "
            f"since checkpoints are read with weights_only=True (no code runs while loading). {_advice(value)}"
        )


def verify_archive(path: str) -> None:
    """Check the CRC-32 of every record of the ``torch.save`` archive at `path`.

    Files in torch's legacy (non-zip) format have no checksums and are not checked.

    Raises:
        CorruptCheckpointError: a record's bytes do not match its checksum; the message names the file,
            the state key the record holds, and both checksums.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return  # torch's legacy format, or an archive too damaged to index: torch.load's error says which
    with archive:
        for info in archive.infolist():
            actual = _crc_of(archive, info)
            if actual != info.CRC:
                raise CorruptCheckpointError(
                    f"Checkpoint {path!r} is damaged: {_holder(archive, info.filename)} (record "
                    f"{info.filename!r}) has CRC-32 {actual:#010x}, but {info.CRC:#010x} was written. The file "
                    "changed after it was saved (disk, copy or transfer error); load an earlier checkpoint."
                )


def _leaves(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    if type(value) in _CONTAINERS:
        for key, item in value.items():
            if not isinstance(key, _PLAIN):
                yield f"{where} key {key!r}", key
            yield from _leaves(item, f"{where}[{key!r}]")
    elif type(value) in (list, tuple, set, frozenset):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{where}[{index}]")
    else:
        yield where, value


def _loads_safely(value: Any) -> bool:
    # The exact test: what weights_only=True accepts depends on the torch release and on the user's
    # torch.serialization.add_safe_globals, so ask torch. Only unusual leaves get here.
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
    except Exception:
        return False  # not even picklable (a lambda, a local class): torch.save would fail on it too
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception:
        return False
    return True


def _advice(value: Any) -> str:
    if isinstance(value, argparse.Namespace):
        return "Store vars(args) (a dict) instead, and rebuild it with argparse.Namespace(**d) after loading."
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return "Functions cannot be stored safely; store the settings that recreate it (a name, numbers)."
    if isinstance(value, type):
        return f"Store its name instead, e.g. {value.__qualname__!r}."
    if isinstance(value, types.ModuleType):
        return f"Store its name instead, e.g. {value.__name__!r}."
    if hasattr(value, "state_dict"):
        return "Store value.state_dict() (or put the object itself as a top-level value of the state)."
    return (
        "Convert it to plain values (dict, list, str, numbers, tensors), e.g. dataclasses.asdict(x) or "
        f"vars(x), or allow the type with torch.serialization.add_safe_globals([{type(value).__qualname__}]) "
        "before both saving and loading."
    )


def _crc_of(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    crc = 0
    # Read the stored bytes ourselves: zipfile's own CRC check would raise without the actual value.
    with archive.open(info) as member:
        member._expected_crc = None  # type: ignore[attr-defined]  # we compare below, with both values
        while chunk := member.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _holder(archive: zipfile.ZipFile, record: str) -> str:
    """The state key whose tensor lives in `record`, found without running anything from the file."""
    folder, _, name = record.rpartition("/data/")
    if not folder or "/" in name:
        return "its index of objects" if record.endswith("data.pkl") else f"record {record!r}"
    try:
        with archive.open(f"{folder}/data.pkl") as file:
            tree = _StubUnpickler(file).load()
    except Exception:
        return f"a tensor (storage {name})"
    for where, found in _storage_paths(tree, "state"):
        if found == name:
            return f"the tensor at {where}"
    return f"a tensor (storage {name})"


class _Stub:
    # Stands in for every global the pickle names, so reading the index executes nothing.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Storage:
    def __init__(self, key: str) -> None:
        self.key = key


class _StubDict(dict[Any, Any]):
    def __setstate__(self, state: Any) -> None:  # an OrderedDict's attributes (a state dict's _metadata)
        pass


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _StubDict
        return _Stub

    def persistent_load(self, pid: Any) -> Any:
        return _Storage(str(pid[2])) if isinstance(pid, tuple) and len(pid) > 2 else _Storage("?")


def _storage_paths(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, _Storage):
        yield where, value.key
    elif isinstance(value, _Stub):
        for item in value.args:  # a rebuilt tensor: its storage is among the arguments; the path stays
            yield from _storage_paths(item, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _storage_paths(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _storage_paths(item, f"{where}[{index}]")


def checkpoint_size(state: Any) -> int:
    """Bytes of tensor data in `state`: about the size its checkpoint file will have."""
    total = 0
    seen: set[int] = set()
    for _, value in _leaves(state, ""):
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total
