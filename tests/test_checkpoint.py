from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from treadle import Fabric, checkpoint
from treadle.checkpoint import atomic_save, load_checkpoint, load_raw, save_checkpoint, to_saveable
from treadle.seed import capture_rng_state, restore_rng_state, seed_everything

SRC = str(Path(checkpoint.__file__).parents[1])


class Opaque:
    """A user class that weights_only=True must refuse to unpickle."""

    def __init__(self) -> None:
        self.value = 3


class Exploding:
    """Pickling it fails, as a broken user object would in the middle of a save."""

    def __reduce__(self) -> Any:
        raise RuntimeError("boom while pickling")


class Counter:
    """A user object with state_dict/load_state_dict, like a data-loop position."""

    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.n = state["n"]


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any, torch.amp.GradScaler]:
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(3):
        scaler.scale(model(torch.randn(5, 4)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        scheduler.step()
    return model, optimizer, scheduler, scaler


def _listing(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


def test_full_state_round_trips_and_loads_with_weights_only(tmp_path: Path) -> None:
    seed_everything(3)
    model, optimizer, scheduler, scaler = _trained()
    rng = capture_rng_state()
    extras = {
        "step": 7,
        "loss": 0.25,
        "name": "run-1",
        "history": [1.0, 2.0],
        "meta": {"epoch": 2, "ok": True},
    }
    path = tmp_path / "ckpt.pt"
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "rng": rng}
    save_checkpoint(path, {**state, **extras})

    raw = torch.load(path, weights_only=True)  # everything treadle writes is safe to load
    assert isinstance(raw["optimizer"]["state"][0]["step"], torch.Tensor)
    assert raw["scaler"] == {**scaler.state_dict(), "_growth_tracker": 3}

    model2 = _model()
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=1, gamma=0.5)
    fresh: dict[str, Any] = {
        "model": model2,
        "optimizer": optimizer2,
        "scheduler": scheduler2,
        "scaler": torch.amp.GradScaler("cpu"),
        "rng": None,
        **dict.fromkeys(extras),
    }
    remainder = load_checkpoint(path, fresh)

    assert remainder == {}
    for key, value in model.state_dict().items():
        assert torch.equal(value, model2.state_dict()[key]), key
    assert torch.equal(
        optimizer2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert fresh["scaler"].state_dict() == scaler.state_dict()
    assert {key: fresh[key] for key in extras} == extras
    restore_rng_state(fresh["rng"])
    expected = torch.rand(3)
    restore_rng_state(rng)
    assert torch.equal(expected, torch.rand(3))


def test_load_returns_remainder_and_writes_plain_values_back(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    counter = Counter()
    counter.n = 5
    save_checkpoint(path, {"counter": counter, "step": 11, "extra": [1, 2], "other": "x"})

    fresh = Counter()
    state: dict[str, Any] = {"counter": fresh, "step": 0}
    remainder = load_checkpoint(path, state)

    assert fresh.n == 5
    assert state == {"counter": fresh, "step": 11}
    assert remainder == {"extra": [1, 2], "other": "x"}
    assert set(load_checkpoint(path)) == {"counter", "step", "extra", "other"}


def test_strict_missing_keys_are_all_named(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": _model(), "step": 1})
    state = {"model": _model(), "optimizer": None, "scheduler": None}

    with pytest.raises(KeyError) as info:
        load_checkpoint(path, state)

    message = str(info.value)
    assert "'optimizer', 'scheduler'" in message
    assert "'model', 'step'" in message
    assert str(path) in message
    assert "strict=False" in message
    assert not message.startswith('"')  # readable, not KeyError's quoted repr

    remainder = load_checkpoint(path, state, strict=False)
    assert remainder == {"step": 1}
    assert state["optimizer"] is None


def test_strict_false_loads_module_leniently(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(
        path, {"model": torch.nn.Linear(2, 2)}, filter={"model": lambda name, _: name == "weight"}
    )
    target = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="bias"):
        load_checkpoint(path, {"model": target})
    load_checkpoint(path, {"model": target}, strict=False)


def test_filter_keeps_only_selected_entries(tmp_path: Path) -> None:
    model = _model()
    saveable = to_saveable(
        {"model": model, "step": 3, "note": "x"},
        filter={"model": lambda name, _: name.startswith("0."), "note": lambda name, value: False},
    )
    assert list(saveable["model"]) == ["0.weight", "0.bias"]
    assert saveable["step"] == 3
    assert "note" not in saveable
    # Per-submodule versions survive filtering (BatchNorm reads them when loading).
    assert saveable["model"]._metadata == model.state_dict()._metadata


def test_bad_filter_is_reported(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"filter has 'modle', which state does not have. state holds: 'model'"
    ):
        to_saveable({"model": _model()}, filter={"modle": lambda name, value: True})
    with pytest.raises(TypeError, match=r"filter\['model'\] must be a callable"):
        to_saveable({"model": _model()}, filter={"model": "weight"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="filter must be a dict"):
        to_saveable({"model": _model()}, filter=lambda name, value: True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="state must be a dict"):
        to_saveable(_model())  # type: ignore[arg-type]


def test_compiled_module_state_has_no_orig_mod_prefix(tmp_path: Path) -> None:
    model = _model()
    # torch.compile is lazy: nothing is compiled until forward, so this needs no C compiler and is fast.
    compiled = torch.compile(model)
    assert any(key.startswith("_orig_mod.") for key in compiled.state_dict())

    saveable = to_saveable({"model": compiled})
    assert list(saveable["model"]) == list(model.state_dict())

    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": compiled})
    plain, compiled_again = _model(), torch.compile(_model())
    load_checkpoint(path, {"model": plain})
    load_checkpoint(path, {"model": compiled_again})
    for key, value in model.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value)
        assert torch.equal(compiled_again.state_dict()[f"_orig_mod.{key}"], value)


def test_orig_mod_stand_in_is_unwrapped() -> None:
    class Wrapper:
        def __init__(self, inner: Counter) -> None:
            self._orig_mod = inner

        def state_dict(self) -> dict[str, Any]:
            return {"wrapped": True}

    inner = Counter()
    inner.n = 4
    assert to_saveable({"obj": Wrapper(inner)}) == {"obj": {"n": 4}}


def test_atomic_save_keeps_old_file_when_pickling_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": _model(), "step": 1})
    before = path.read_bytes()

    with pytest.raises(TypeError, match=r"Cannot save state\['bad'\]: a value of type .*Exploding"):
        save_checkpoint(path, {"model": _model(), "step": 2, "bad": Exploding()})
    # The same failure inside torch.save, past the check (as for a type allowed by add_safe_globals).
    monkeypatch.setattr(checkpoint, "check_loadable", lambda state: None)
    with pytest.raises(RuntimeError, match="boom while pickling"):
        save_checkpoint(path, {"model": _model(), "step": 2, "bad": Exploding()})

    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["ckpt.pt"]


def test_atomic_save_keeps_old_file_when_writing_fails_half_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    def half_then_fail(obj: Any, file: Any) -> None:
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match=f"could not write checkpoint '{path}': no space left on device") as info:
        atomic_save({"step": 2, "weights": torch.zeros(250_000)}, path)
    assert info.value.errno == 28 and "needed ~1.0 MB" in str(info.value)
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(torch, "save", lambda obj, file: (_ for _ in ()).throw(KeyboardInterrupt()))
        atomic_save({"step": 2}, path)

    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["ckpt.pt"]


_KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import torch
    from treadle.checkpoint import atomic_save

    def never_commit(src, dst):
        # Keeps the child from ever committing, so the kill always lands before the rename.
        time.sleep(60)

    os.replace = never_commit
    atomic_save({"big": torch.ones(50_000_000), "step": 2}, sys.argv[1])  # 200 MB
    """
)


def test_killed_writer_never_leaves_half_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], env=env)
    try:
        deadline = time.monotonic() + 60
        written = 0
        # Kill as soon as the temporary file holds data, i.e. while torch.save is still writing.
        while written < 1_000_000:
            assert child.poll() is None, "writer exited before it was killed"
            assert time.monotonic() < deadline, "writer never started writing"
            temporaries = [entry for entry in tmp_path.iterdir() if entry.name != "ckpt.pt"]
            written = max((entry.stat().st_size for entry in temporaries), default=0)
            time.sleep(0.002)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    assert child.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert load_checkpoint(path) == {"step": 1}
    leftovers = [entry.name for entry in tmp_path.iterdir() if entry.name != "ckpt.pt"]
    assert all(name.startswith(".ckpt.pt.") and name.endswith(".tmp") for name in leftovers)


def test_atomic_save_creates_folders_and_respects_umask(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "last.pt"
    atomic_save({"x": 1}, path)
    assert torch.load(path, weights_only=True) == {"x": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(IsADirectoryError, match="existing folder"):
        atomic_save({"x": 1}, tmp_path / "a")


def test_missing_file_names_path_and_nearby_checkpoints(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "epoch=1.pt", {"x": 1})
    with pytest.raises(FileNotFoundError, match=r"last\.pt' does not exist.*'epoch=1\.pt'"):
        load_checkpoint(tmp_path / "last.pt")
    with pytest.raises(FileNotFoundError, match=r"folder .* does not exist either"):
        load_checkpoint(tmp_path / "nope" / "last.pt")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_garbage_file_is_reported_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"definitely not a checkpoint" * 10)
    for weights_only in (True, False):
        with pytest.raises(
            RuntimeError, match="is not a readable checkpoint \\(truncated or corrupt\\?\\)"
        ) as info:
            load_checkpoint(path, weights_only=weights_only)
        assert str(path) in str(info.value)
        assert info.value.__cause__ is not None


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.5, 0.999])
def test_truncated_checkpoint_is_reported_as_unreadable(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": _model(), "step": 1})
    data = path.read_bytes()
    cut = int(len(data) * fraction)
    path.write_bytes(data[:cut])
    with pytest.raises(RuntimeError, match="not a readable checkpoint") as info:
        load_checkpoint(path, {"model": _model(), "step": 0})
    assert str(path) in str(info.value)
    assert f"({cut} bytes)" in str(info.value)


def test_weights_only_refusal_names_type_and_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"thing": Opaque(), "step": 1}, path)  # written by another tool: treadle refuses to save it

    with pytest.raises(pickle.UnpicklingError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "Opaque" in message
    assert "weights_only=False" in message
    assert str(path) in message

    loaded = load_checkpoint(path, weights_only=False)
    assert isinstance(loaded["thing"], Opaque)


def test_load_into_non_dict_state_or_non_dict_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    atomic_save(torch.ones(2), path)
    with pytest.raises(TypeError, match="holds a Tensor"):
        load_checkpoint(path, {"x": None})
    with pytest.raises(TypeError, match="state must be a dict"):
        load_checkpoint(path, [1])  # type: ignore[arg-type]


def test_bare_state_dict_points_to_load_raw(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(KeyError, match=r"bare state dict.*load_raw"):
        load_checkpoint(path, {"model": _model()})

    fresh = _model()
    load_raw(path, fresh)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_load_raw_optimizer_and_compiled_module(tmp_path: Path) -> None:
    model, optimizer, _, _ = _trained()
    torch.save(optimizer.state_dict(), tmp_path / "opt.pt")
    torch.save(model.state_dict(), tmp_path / "model.pt")

    fresh_model = _model()
    fresh_optimizer = torch.optim.Adam(fresh_model.parameters(), lr=0.5)
    load_raw(tmp_path / "opt.pt", fresh_optimizer)
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    load_raw(tmp_path / "model.pt", torch.compile(fresh_model))
    assert torch.equal(fresh_model[0].weight, model[0].weight)


def test_load_raw_rejects_full_checkpoints_and_other_objects(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "full.pt"
    save_checkpoint(path, {"model": model, "optimizer": optimizer})

    with pytest.raises(ValueError, match=r"'model', 'optimizer'.*full checkpoint.*load_checkpoint"):
        load_raw(path, model)
    with pytest.raises(ValueError, match="not an optimizer state dict"):
        load_raw(path, optimizer)
    with pytest.raises(
        TypeError, match=r"load_raw\(obj=...\) takes a torch.nn.Module or torch.optim.Optimizer"
    ):
        load_raw(path, Counter())  # type: ignore[arg-type]

    torch.save(model.state_dict(), tmp_path / "raw.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_raw(tmp_path / "raw.pt", torch.nn.Linear(4, 8))
    load_raw(tmp_path / "raw.pt", torch.nn.Sequential(torch.nn.Linear(4, 8)), strict=False)


@pytest.mark.gpu
def test_cuda_checkpoint_loads_to_cpu_and_restores_onto_cuda(tmp_path: Path) -> None:
    model = _model().cuda()
    optimizer = torch.optim.Adam(model.parameters())
    scaler = torch.amp.GradScaler(
        "cuda", init_scale=2.0**4
    )  # small: the first step must not overflow and be skipped
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(torch.randn(5, 4, device="cuda")).float().sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": model, "optimizer": optimizer, "scaler": scaler})

    # Read back on the CPU, so no rank allocates on the GPU the file was written from.
    loaded = load_checkpoint(path)
    assert loaded["model"]["0.weight"].device.type == "cpu"
    assert loaded["scaler"] == scaler.state_dict()

    fresh = _model().cuda()
    fresh_optimizer = torch.optim.Adam(fresh.parameters())
    load_checkpoint(path, {"model": fresh, "optimizer": fresh_optimizer})
    assert torch.equal(fresh[0].weight, model[0].weight)
    assert fresh_optimizer.state_dict()["state"][0]["exp_avg"].device.type == "cuda"


def test_missing_keys_check_is_shared_and_strict_only() -> None:
    with pytest.raises(
        checkpoint.MissingKeysError, match=r"'ckpt' has no entry for 'optimizer'.*holds: 'model'"
    ):
        checkpoint.check_missing_keys("ckpt", {"model": 1, "optimizer": 2}, {"model": None}, strict=True)
    checkpoint.check_missing_keys("ckpt", {"optimizer": 2}, {}, strict=False)


def test_restore_entries_unwraps_compiled_modules_and_notes_the_failing_key() -> None:
    saved_model = _model()
    state: dict[str, Any] = {"model": torch.compile(_model()), "step": 0}
    rest = checkpoint.restore_entries(
        state, {"model": saved_model.state_dict(), "step": 7, "extra": 1}, "ckpt", strict=True
    )
    assert rest == {"extra": 1} and state["step"] == 7
    restored = state["model"]._orig_mod.state_dict()
    assert all(torch.equal(restored[name], value) for name, value in saved_model.state_dict().items())

    class Refusing:
        def load_state_dict(self, entry: Any) -> None:
            raise ValueError("wrong shape")

    with pytest.raises(ValueError, match="wrong shape") as raised:
        checkpoint.restore_entries({"thing": Refusing()}, {"thing": {}}, "ckpt", strict=True, keys=["thing"])
    # treadle.errors.add_note also works on Python 3.10, where exceptions have no add_note yet.
    assert getattr(raised.value, "__notes__", None) == [
        "(while restoring state['thing'] from checkpoint 'ckpt')"
    ]


def test_only_the_given_keys_are_restored() -> None:
    state = {"a": 0, "b": 0}
    assert checkpoint.restore_entries(state, {"a": 1, "b": 2}, "ckpt", strict=True, keys=["a"]) == {"b": 2}
    assert state == {"a": 1, "b": 0}


def test_a_filter_that_keeps_no_entry_drops_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    fabric = Fabric(accelerator="cpu")
    model = fabric.setup(_model())
    fabric.save(path, {"model": model, "step": 4}, filter={"model": lambda name, _: name.startswith("lm_head.")})
    assert torch.load(path, weights_only=True) == {"step": 4}
    assert fabric.load(path) == {"step": 4}
