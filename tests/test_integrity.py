"""Checkpoints on a bad day: full disks, failing writes, odd paths, unloadable values and flipped bits."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from treadle import Fabric
from treadle.checkpoint import CorruptCheckpointError, atomic_save
from treadle.integrity import check_loadable, verify_archive

SRC = str(Path(__file__).resolve().parents[1] / "src")


@dataclasses.dataclass
class Config:
    lr: float = 0.1


def _fabric() -> Fabric:
    return Fabric(accelerator="cpu")


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=120, env=env
    )


_SAVE_TWICE = """
    import os, sys, torch
    from treadle import Fabric
    path = sys.argv[1]
    fabric = Fabric(accelerator="cpu")
    fabric.save(path, {"w": torch.zeros(1000), "step": 1})
    {limit}
    try:
        fabric.save(path, {"w": torch.zeros(500_000), "step": 2})
    except OSError as error:
        print("ERROR", error.errno, error)
    print("LOADED", fabric.load(path)["step"], sorted(os.listdir(os.path.dirname(path))))
"""


def test_a_write_that_fails_half_way_names_the_checkpoint_and_keeps_the_previous_one(tmp_path: Path) -> None:
    # A real failing write() under torch.save: the file-size limit makes the kernel refuse past 200 kB.
    limit = (
        "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))"
    )
    path = tmp_path / "c.pt"
    result = _run(_SAVE_TWICE.replace("{limit}", limit), str(path))
    assert result.returncode == 0, result.stderr
    assert f"ERROR 27 [Errno 27] could not write checkpoint '{path}': File too large" in result.stdout
    assert "unexpected pos" not in result.stdout + result.stderr
    assert "LOADED 1 ['c.pt']" in result.stdout  # the previous checkpoint, and no temporary file


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("mounting a 1 MB tmpfs needs root; the injected-failure test covers the same path")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_says_so_with_the_size_needed(small_disk: Path) -> None:
    path = small_disk / "c.pt"
    result = _run(_SAVE_TWICE.replace("{limit}", ""), str(path))
    assert result.returncode == 0, result.stderr
    assert f"ERROR 28 [Errno 28] could not write checkpoint '{path}': no space left on device (needed ~2.0 MB" in (
        result.stdout
    )
    assert "LOADED 1 ['c.pt']" in result.stdout


def test_an_unwritable_place_is_named_by_the_checkpoint_path_not_the_temporary_file() -> None:
    with pytest.raises(OSError) as info:
        _fabric().save("/proc/treadle-test.pt", {"step": 1})
    assert "'/proc/treadle-test.pt'" in str(info.value) and ".tmp" not in str(info.value)


@pytest.mark.parametrize("path", [3, b"ckpt.pt", None, ["a.pt"]])
def test_a_path_that_is_not_a_str_or_pathlike_is_a_type_error(path: Any) -> None:
    with pytest.raises(TypeError, match=r"Fabric.save\(path=\.\.\.\) must be a path as str or pathlib.Path"):
        _fabric().save(path, {"step": 1})
    with pytest.raises(TypeError, match=r"Fabric.load\(path=\.\.\.\)"):
        _fabric().load(path)


def test_a_trailing_slash_is_refused_at_save_and_named_at_load(tmp_path: Path) -> None:
    fabric = _fabric()
    with pytest.raises(ValueError, match="ends with a folder separator.*last.ckpt"):
        fabric.save(f"{tmp_path}/ckpt/", {"step": 1})
    assert not (tmp_path / "ckpt").exists()
    fabric.save(tmp_path / "c.pt", {"step": 1})
    with pytest.raises(NotADirectoryError, match="names a file"):
        fabric.load(f"{tmp_path}/c.pt/")


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (argparse.Namespace(lr=0.1), r"state\['cfg'\]: a value of type argparse.Namespace.*vars\(args\)"),
        (lambda step: step * 2, r"state\['cfg'\]: .*function.*Functions cannot be stored"),
        (Config, r"state\['cfg'\]: .*Store its name instead, e.g. 'Config'"),
        (os, r"state\['cfg'\]: .*module.*'os'"),
        ({"nested": [1, Config()]}, r"state\['cfg'\]\['nested'\]\[1\]: .*Config.*dataclasses.asdict"),
    ],
)
def test_save_refuses_what_a_safe_load_would_refuse_and_names_the_key(
    tmp_path: Path, value: Any, match: str
) -> None:
    path = tmp_path / "c.pt"
    _fabric().save(path, {"step": 1})
    with pytest.raises(TypeError, match=match):
        _fabric().save(path, {"model": nn.Linear(2, 2), "cfg": value})
    assert _fabric().load(path) == {"step": 1}  # the previous checkpoint is untouched


def test_types_allowed_by_add_safe_globals_are_saved_and_loaded(tmp_path: Path) -> None:
    torch.serialization.add_safe_globals([Config])
    try:
        _fabric().save(tmp_path / "c.pt", {"cfg": Config(0.5), "plain": vars(argparse.Namespace(lr=1))})
        assert _fabric().load(tmp_path / "c.pt") == {"cfg": Config(0.5), "plain": {"lr": 1}}
    finally:
        torch.serialization.clear_safe_globals()
    check_loadable({"dtype": torch.float16, "size": torch.Size([2]), "n": None, "t": (1, 2.0, "x", b"y")})


def _flip(path: Path, fraction: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * fraction)] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_is_caught_on_load_and_names_the_key(tmp_path: Path) -> None:
    fabric = _fabric()
    model = fabric.setup(nn.Sequential(nn.Linear(64, 256), nn.Linear(256, 1)))  # 0.weight: 90% of the file
    path = tmp_path / "c.pt"
    fabric.save(path, {"model": model, "step": 7})
    assert fabric.load(path, {"model": model}) == {"step": 7}
    _flip(path, 0.5)  # inside the big weight's bytes
    with pytest.raises(CorruptCheckpointError) as info:
        fabric.load(path, {"model": model})
    message = str(info.value)
    assert f"Checkpoint '{path}' is damaged: the tensor at state['model']['0.weight']" in message
    assert "has CRC-32 0x" in message and "was written" in message


def test_verify_archive_passes_what_torch_wrote_and_skips_the_legacy_format(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "zip.pt")
    verify_archive(str(tmp_path / "zip.pt"))
    torch.save({"w": torch.ones(3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    verify_archive(str(tmp_path / "legacy.pt"))


def test_the_next_save_removes_temporaries_a_killed_save_left(tmp_path: Path) -> None:
    (tmp_path / ".c.pt.0123456789ab.tmp").write_bytes(b"PK half")
    (tmp_path / ".other.pt.0123456789ab.tmp").write_bytes(b"not ours")
    atomic_save({"step": 1}, tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.0123456789ab.tmp", "c.pt"]
