"""fabric.save(async_save=True): the copy is taken at once, the file is written behind training, atomically,
and a write error reaches the user at the next save, wait or exit."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from treadle import Fabric, checkpoint
from treadle.callbacks import ModelCheckpoint
from treadle.strategies import FSDPStrategy

SRC = Path(__file__).resolve().parents[1] / "src"


def setup() -> tuple[Fabric, Any, Any]:
    fabric = Fabric(accelerator="cpu")
    model = nn.Linear(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    return fabric, model, optimizer


def test_the_file_holds_the_state_of_the_moment_of_the_call(tmp_path: Path) -> None:
    fabric, model, optimizer = setup()
    before = model.weight.detach().clone()
    fabric.save(tmp_path / "a.pt", {"model": model, "optimizer": optimizer, "step": 1}, async_save=True)
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on while the file is written
    fabric.wait_for_saves()
    saved = torch.load(tmp_path / "a.pt", weights_only=True)
    assert torch.equal(saved["model"]["weight"], before) and saved["step"] == 1
    fabric.load(tmp_path / "a.pt", {"model": model})
    assert torch.equal(model.weight, before)
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"], "no temporary file is left"


def test_a_second_save_waits_for_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fabric, model, _ = setup()
    real, events = checkpoint.atomic_save, []

    def slow(obj: Any, path: Any) -> None:
        events.append(f"start {Path(path).name}")
        time.sleep(0.3)
        real(obj, path)
        events.append(f"end {Path(path).name}")

    monkeypatch.setattr(checkpoint, "atomic_save", slow)
    started = time.perf_counter()
    fabric.save(tmp_path / "1.pt", {"model": model}, async_save=True)
    assert time.perf_counter() - started < 0.25, "the call returns before the write is done"
    fabric.save(tmp_path / "2.pt", {"model": model}, async_save=True)
    fabric.wait_for_saves()
    assert events == ["start 1.pt", "end 1.pt", "start 2.pt", "end 2.pt"]


def test_a_failed_write_is_raised_by_the_next_save_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fabric, model, _ = setup()
    path = tmp_path / "last.pt"
    fabric.save(path, {"model": model, "step": 1})
    real = checkpoint.atomic_save

    def full(obj: Any, target: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_save", full)
    fabric.save(path, {"model": model, "step": 2}, async_save=True)  # returns: the error comes later
    monkeypatch.setattr(checkpoint, "atomic_save", real)
    with pytest.raises(OSError, match="No space left") as raised:
        fabric.save(path, {"model": model, "step": 3})
    assert "while writing the checkpoint" in "".join(getattr(raised.value, "__notes__", []))
    assert torch.load(path, weights_only=True)["step"] == 1, "the previous checkpoint is intact"
    fabric.save(path, {"model": model, "step": 3})  # the error was raised once; saving works again
    assert torch.load(path, weights_only=True)["step"] == 3


def test_bad_argument_and_a_one_rank_fsdp_job_both_kinds(tmp_path: Path) -> None:
    fabric, model, _ = setup()
    with pytest.raises(TypeError, match=r"Fabric.save\(async_save='yes'\) must be True or False"):
        fabric.save(tmp_path / "a.pt", {"model": model}, async_save="yes")  # type: ignore[arg-type]
    strategy = FSDPStrategy(timeout=timedelta(seconds=20))
    sharded = Fabric(accelerator="cpu", strategy=strategy)
    sharded.launch()
    try:
        module = sharded.setup(nn.Linear(4, 4))
        sharded.save(tmp_path / "sharded", {"model": module, "step": 2}, async_save=True)
        sharded.wait_for_saves()
        restored: dict[str, Any] = {"model": module, "step": 0}
        sharded.load(tmp_path / "sharded", restored)
        assert restored["step"] == 2 and (tmp_path / "sharded" / "meta.pt").is_file()
        strategy.state_dict_type = "full"
        sharded.save(tmp_path / "full.pt", {"model": module}, async_save=True)
        sharded.wait_for_saves()
        assert set(torch.load(tmp_path / "full.pt", weights_only=True)["model"]) == {"weight", "bias"}
    finally:
        strategy.teardown()


SCRIPT = """
import sys, torch
from treadle import Fabric, checkpoint
fabric = Fabric(accelerator="cpu")
state = {"weights": torch.randn(2_000_000), "step": 7}
if sys.argv[2] == "fail":
    def fail(obj, path):
        raise OSError(28, "No space left on device")
    checkpoint.atomic_save = fail
fabric.save(sys.argv[1], state, async_save=True)
print("returned")
"""


@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_the_process_waits_for_the_write_before_it_exits(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "exit.pt"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(path), mode],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "returned" in done.stdout, done.stderr
    if mode == "ok":
        assert torch.load(path, weights_only=True)["step"] == 7
    else:
        assert not path.exists()
        assert "the background save of" in done.stderr and "No space left" in done.stderr


def test_model_checkpoint_saves_in_the_background_and_keeps_top_k(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = checkpoint.atomic_save

    def slow(obj: Any, path: Any) -> None:
        time.sleep(0.05)
        real(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", slow)
    callback = ModelCheckpoint(
        tmp_path, filename="{epoch}", monitor="val_loss", save_top_k=2, async_save=True
    )
    fabric = Fabric(accelerator="cpu", callbacks=[callback])
    model = fabric.setup(nn.Linear(2, 2))
    for epoch, loss in enumerate([3.0, 1.0, 2.0, 0.5]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        state = {"model": model, "checkpoint_callback": callback}
        metrics = {"val_loss": loss}
        fabric.call(
            "on_train_epoch_end", fabric=fabric, state=state, epoch=epoch, step=epoch + 1, metrics=metrics
        )
        on_disk = {p.name for p in tmp_path.iterdir() if p.name.endswith(".ckpt")} - {"last.ckpt"}
        assert len(on_disk) >= min(epoch, 2), "a displaced file goes only once its successor is written"
    fabric.wait_for_saves()
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} == {
        "1.ckpt",
        "3.ckpt",
        "last.ckpt",
    }
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(last["model"]["weight"], torch.full((2, 2), 3.0)), "last.ckpt is the newest state"
    assert os.path.samefile(tmp_path / "last.ckpt", tmp_path / "3.ckpt")


def test_the_trainer_returns_with_its_checkpoints_on_disk(tmp_path: Path) -> None:
    from tests.callbacks.tiny_trainer import fit_tiny

    callback = ModelCheckpoint(tmp_path, monitor="val_loss", save_top_k=1, async_save=True)
    fit_tiny([callback], max_epochs=3, checkpoint_dir=tmp_path)
    assert callback.best_model_path and os.path.isfile(callback.best_model_path)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["progress"]["global_step"] == 12, "the final state, written before fit() returned"
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".ckpt")]) == 2


def test_after_save_runs_once_the_file_is_written_and_never_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fabric, model, _ = setup()
    seen: list[bool] = []
    fabric.after_save(lambda: seen.append(True))  # nothing in flight: at once
    assert seen == [True]
    real = checkpoint.atomic_save

    def slow(obj: Any, path: Any) -> None:
        time.sleep(0.2)
        real(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_save", slow)
    fabric.save(tmp_path / "a.pt", {"model": model}, async_save=True)
    fabric.after_save(lambda: seen.append((tmp_path / "a.pt").is_file()))
    assert seen == [True], "not before the write is done"
    fabric.wait_for_saves()
    assert seen == [True, True], "after it, with the file in place"

    def full(obj: Any, path: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_save", full)
    fabric.save(tmp_path / "b.pt", {"model": model}, async_save=True)
    fabric.after_save(lambda: seen.append(False))
    with pytest.raises(OSError, match="No space left"):
        fabric.wait_for_saves()
    assert seen == [True, True], "a failed write runs no follow-up"
    with pytest.raises(TypeError, match=r"Fabric.after_save\(follow_up='x'\) must be a function"):
        fabric.after_save("x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"ModelCheckpoint\(async_save='yes'\) must be True or False"):
        ModelCheckpoint(tmp_path, async_save="yes")  # type: ignore[arg-type]
