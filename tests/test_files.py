"""treadle.files.atomic_open: the one temporary-file-and-rename writer."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from treadle.files import atomic_open


def test_creates_parents_and_writes_text_without_newline_translation(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "rows.csv"
    with atomic_open(target, "w") as file:
        file.write("x,y\r\n1,é\n")
    assert target.read_bytes() == "x,y\r\n1,é\n".encode()
    assert sorted(p.name for p in target.parent.iterdir()) == ["rows.csv"]


def test_fsyncs_the_file_and_then_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with atomic_open(tmp_path / "x.bin", "wb") as file:
        file.write(b"data")
    if os.path.isdir("/proc/self/fd"):
        assert synced == ["file", "folder"]
    else:
        assert len(synced) == 2


def test_a_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_open(target, "w") as file:
        file.write("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match=r"it is an existing folder"):
        atomic_open(tmp_path, "wb")
    with pytest.raises(ValueError, match=r"atomic_open\(mode='a'\) is not supported"):
        atomic_open(tmp_path / "x", "a")  # type: ignore[call-overload]


def test_the_temporary_name_is_retried_on_collision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".x.taken.tmp").write_text("someone else's")
    tokens = iter(["taken", "free"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(tokens))
    with atomic_open(tmp_path / "x", "w") as file:
        file.write("new")
    assert (tmp_path / "x").read_text() == "new"
    assert (tmp_path / ".x.taken.tmp").read_text() == "someone else's"


def test_atomic_link_replaces_the_target_without_copying(tmp_path: Path) -> None:
    from treadle.files import atomic_link

    source = tmp_path / "epoch=1.ckpt"
    source.write_bytes(b"new")
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"old")
    assert atomic_link(source, last) is True
    assert last.read_bytes() == b"new" and os.path.samefile(source, last)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
