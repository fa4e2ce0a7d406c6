"""The process starters' pieces that need no processes, and `treadle run`'s argument checks (in process)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from treadle.cli import main
from treadle.strategies.launch import find_free_port, script_command


def test_free_port_can_be_bound() -> None:
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_script_command_reruns_this_interpreter_with_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-u", "-m", "pkg.train", "--lr", "1"])
    assert script_command() == [sys.executable, "-u", "-m", "pkg.train", "--lr", "1"]


def test_script_command_refuses_an_interactive_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "orig_argv", ["python3"])
    with pytest.raises(RuntimeError, match=r"strategy='ddp_notebook' with fabric.launch\(train_function\)"):
        script_command()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--devices", "2", "MISSING"], "does not exist"),
        (["--devices", "0", "SCRIPT"], "--devices '0' must be at least 1"),
        (["--devices", "two", "SCRIPT"], "--devices 'two' must be a number"),
        (["--num-nodes", "2", "SCRIPT"], "--num-nodes 2 needs --main-address"),
        (
            ["--num-nodes", "2", "--node-rank", "2", "--main-address", "h", "SCRIPT"],
            "--node-rank 2 must be between 0 and",
        ),
        (["--main-port", "70000", "SCRIPT"], "--main-port 70000 is not a TCP port"),
    ],
)
def test_run_reports_bad_arguments(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "train.py"
    script.write_text("print('never runs')\n")
    argv = [
        str(script) if arg == "SCRIPT" else str(tmp_path / "nope.py") if arg == "MISSING" else arg
        for arg in argv
    ]
    assert main(["run", *argv]) == 2
    assert message in capsys.readouterr().err


def test_run_rejects_an_unknown_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--strategy", "ddp_find_unused", "train.py"])
    assert "invalid choice: 'ddp_find_unused'" in capsys.readouterr().err


@pytest.mark.parametrize("has_prctl", [True, False])
def test_children_die_with_the_parent_only_where_prctl_exists(
    monkeypatch: pytest.MonkeyPatch, has_prctl: bool
) -> None:
    import subprocess

    from treadle.strategies import launch

    seen: list[object] = []

    class FakePopen:
        def __init__(self, command: list[str], env: dict[str, str], preexec_fn: object = None) -> None:
            seen.append(preexec_fn)

    monkeypatch.setattr(launch, "_PRCTL", (lambda *args: 0) if has_prctl else None)
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    launch._LocalRanks().start(1, ["python", "train.py"], {})
    assert seen == [launch._die_with_parent if has_prctl else None]


def test_fork_after_cuda_was_initialized_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from treadle.strategies.launch import spawn_ranks

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match=r"CUDA was already initialized.*strategy='ddp_spawn'"):
        spawn_ranks(print, (), {}, world_size=2, prepare_rank=lambda env: None, start_method="fork")
