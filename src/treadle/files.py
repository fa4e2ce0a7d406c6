"""Replacing a file atomically: write a temporary file beside it, flush it to disk, rename it over the target.

Checkpoints, CSV logs, hyperparameter files, plots and traces all go through :func:`atomic_open`, so a
crash mid-write never leaves a half-written file where a good one was. This module imports nothing heavy
(no torch), so loggers can use it and stay cheap to import.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

__all__ = ["atomic_link", "atomic_open"]


@overload
def atomic_open(path: str | os.PathLike[str], mode: Literal["w"]) -> AbstractContextManager[TextIO]: ...


@overload
def atomic_open(path: str | os.PathLike[str], mode: Literal["wb"]) -> AbstractContextManager[BinaryIO]: ...


def atomic_open(path: str | os.PathLike[str], mode: Literal["w", "wb"]) -> AbstractContextManager[IO[Any]]:
    """Open a temporary file next to ``path`` that replaces ``path`` only when the block exits cleanly.

    Readers see either the old file or the complete new one, never a half-written file. Parent folders
    are created. On leaving the block the data is flushed and fsynced, the file is renamed over ``path``
    (atomic within one filesystem), and the folder is fsynced so the rename itself survives a power loss.
    If the block raises (an interrupt included), the temporary file is removed and ``path`` is untouched.
    A process killed outright can leave a ``.<name>.<random>.tmp`` file behind, never a partial ``path``;
    the next successful write of ``path`` removes such leftovers.
    Text mode writes UTF-8 with no newline translation (what the ``csv`` module expects).

    Args:
        path: The file to write.
        mode: ``"w"`` for text, ``"wb"`` for bytes.

    Returns:
        A context manager giving the open temporary file.

    Raises:
        ValueError: ``mode`` is not ``"w"`` or ``"wb"``.
        IsADirectoryError: ``path`` is an existing folder.
        OSError: The folder cannot be created or written; ``path`` is untouched.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_open(target, "w") as f:
        ...     _ = f.write("hello")
        >>> target.read_text()
        'hello'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open(mode={mode!r}) is not supported. Choose 'w' (text) or 'wb' (bytes).")
    target = os.path.abspath(os.fspath(path))
    if os.path.isdir(target):
        raise IsADirectoryError(
            f"Cannot write to {os.fspath(path)!r}: it is an existing folder. Pass a file path inside it."
        )
    return _atomic_open(target, mode)


@contextlib.contextmanager
def _atomic_open(target: str, mode: Literal["w", "wb"]) -> Iterator[IO[Any]]:
    folder, name = os.path.split(target)
    os.makedirs(folder, exist_ok=True)
    temporary, fd = _create_temporary(folder, name)
    try:
        if mode == "w":
            file: IO[Any] = os.fdopen(fd, "w", encoding="utf-8", newline="")
        else:
            file = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        _remove(temporary)
        raise
    try:
        with file:
            yield file
            file.flush()
            # Without fsync the rename can reach the disk before the data does, and a power loss then
            # leaves an empty or partial file under the final name.
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        _remove(temporary)
        raise
    _fsync_folder(folder)
    _remove_stale_temporaries(folder, name)


def atomic_link(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Make ``path`` a hard link to ``source``, replacing what was there atomically (no second write).

    Returns:
        True when linked; False where the filesystem cannot hard-link (the caller then writes a copy).
    """
    target = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(target)
    temporary = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
    try:
        os.link(os.fspath(source), temporary)
    except OSError:
        return False
    try:
        os.replace(temporary, target)
    except BaseException:
        _remove(temporary)
        raise
    _fsync_folder(folder)
    return True


def _create_temporary(folder: str, name: str) -> tuple[str, int]:
    # Created by hand rather than with tempfile.mkstemp, which makes the file 0600: os.replace would carry
    # that onto the final file. 0o666 lets the umask decide, as for any file the user writes.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temporary = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue


def _remove_stale_temporaries(folder: str, name: str) -> None:
    # A save killed outright (SIGKILL, OOM, power loss) leaves its `.<name>.<hex>.tmp` behind; the next
    # successful write of the same file removes them, so a loop that is killed again and again does not
    # fill the disk. Only this file's temporaries match, and only after our own rename has landed.
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{12}}\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if pattern.fullmatch(entry):
                _remove(os.path.join(folder, entry))


def _remove(temporary: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)


def _fsync_folder(folder: str) -> None:
    # Makes the rename itself durable. Best effort: some platforms (Windows) and filesystems cannot open or
    # fsync a folder, and the file is already complete and in place.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
