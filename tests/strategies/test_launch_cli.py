"""`treadle run` reads its options with Fabric's own parsers and rejects unknown ones (no processes are started)."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from treadle.accelerators import ACCELERATOR_CHOICES, CUDAAccelerator
from treadle.cli import main
from treadle.launch_cli import add_run_arguments, run_command

Started = list[tuple[list[str], dict[str, str]]]


class FakeLauncher:
    """Stands in for subprocess.Popen: records the torchrun command and its environment."""

    started: Started = []

    def __init__(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        FakeLauncher.started.append((list(command), dict(env)))

    def wait(self, timeout: float | None = None) -> int:
        return 0


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> Started:
    FakeLauncher.started = []
    monkeypatch.setattr(subprocess, "Popen", FakeLauncher)
    return FakeLauncher.started


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    monkeypatch.setattr(CUDAAccelerator, "device_count", staticmethod(lambda: 2))


def treadle_run(tmp_path: Path, *options: str) -> int:
    script = tmp_path / "train.py"
    script.write_text("")
    parser = argparse.ArgumentParser(prog="treadle run")
    add_run_arguments(parser)
    return run_command(parser.parse_args([*options, str(script)]))


def nproc(command: list[str]) -> str:
    (option,) = [part for part in command if part.startswith("--nproc-per-node=")]
    return option.split("=", 1)[1]


def test_a_list_of_devices_is_accepted_as_by_fabric(tmp_path: Path, launched: Started) -> None:
    assert treadle_run(tmp_path, "--accelerator", "cpu", "--devices", "0,1") == 0
    ((command, env),) = launched
    assert nproc(command) == "2"
    assert env["TREADLE_DEVICES"] == "2"


def test_named_gpus_reach_fabric_as_named(tmp_path: Path, launched: Started, two_gpus: None) -> None:
    assert treadle_run(tmp_path, "--accelerator", "cuda", "--devices", "1") == 0
    assert treadle_run(tmp_path, "--accelerator", "gpu", "--devices", "1,0") == 0
    assert [(nproc(command), env["TREADLE_DEVICES"]) for command, env in launched] == [
        ("1", "1"),
        ("2", "1,0"),
    ]


def test_more_gpus_than_the_machine_has_fail_before_starting(
    tmp_path: Path,
    launched: Started,
    two_gpus: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert treadle_run(tmp_path, "--accelerator", "cuda", "--devices", "8") == 2
    err = capsys.readouterr().err
    assert err.startswith("treadle run: error: --devices '8' asks for 8 cuda devices")
    assert "only 2 are visible" in err
    assert launched == []


@pytest.mark.parametrize(
    ("devices", "message"),
    [("nope", "'nope' must be a number of devices"), ("0", "'0' must be at least 1"), ("0,0", "twice")],
)
def test_bad_devices_are_a_clear_error(
    tmp_path: Path,
    launched: Started,
    capsys: pytest.CaptureFixture[str],
    devices: str,
    message: str,
) -> None:
    assert treadle_run(tmp_path, "--accelerator", "cpu", "--devices", devices) == 2
    err = capsys.readouterr().err
    assert err.startswith("treadle run: error: ") and message in err
    assert launched == []


def test_the_accelerator_choices_are_the_accelerators_own() -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    (action,) = [a for a in parser._actions if a.dest == "accelerator"]
    assert tuple(action.choices or ()) == ACCELERATOR_CHOICES


def test_a_missing_accelerator_is_a_clear_error(
    tmp_path: Path, launched: Started, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: False))
    assert treadle_run(tmp_path, "--accelerator", "cuda", "--devices", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith("treadle run: error: --accelerator cuda: ") and "not available" in err
    assert launched == []


@pytest.mark.parametrize(
    ("options", "hint"),
    [
        (["--devce=2"], "--devce -> --devices"),
        (["--nproc-per-node", "2"], "--nproc-per-node -> --devices"),
        (["--master_port=29400"], "--master_port -> --main-port"),
        (["--fp16"], "go before the script"),
    ],
)
def test_unknown_options_before_the_script_are_rejected(
    tmp_path: Path, launched: Started, capsys: pytest.CaptureFixture[str], options: list[str], hint: str
) -> None:
    # Before, they were silently handed to the script, or their value was taken for the script's name.
    script = tmp_path / "train.py"
    script.write_text("")
    with pytest.raises(SystemExit) as exited:
        main(["run", *options, str(script), "--lr", "1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"treadle run: error: unrecognized arguments: {options[0]}")
    assert hint in err
    assert launched == []


def test_everything_after_the_script_is_the_scripts(tmp_path: Path, launched: Started) -> None:
    script = tmp_path / "train.py"
    script.write_text("")
    after = ["--lr", "1", "--devices", "3", "--unknown", "-x", "pos"]
    assert main(["run", "--accelerator", "cpu", str(script), *after]) == 0
    ((command, _),) = launched
    assert command[command.index(str(script)) :] == [str(script), *after]
    assert nproc(command) == "1"


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("bf16", "bf16-mixed"), ("16", "16-mixed"), ("64", "64-true"), ("16-true", "16-true")],
)
def test_precision_accepts_what_fabric_accepts(
    tmp_path: Path, launched: Started, given: str, canonical: str
) -> None:
    assert treadle_run(tmp_path, "--accelerator", "cpu", "--precision", given) == 0
    ((_, env),) = launched
    assert env["TREADLE_PRECISION"] == canonical


def test_an_unknown_precision_lists_the_choices(
    tmp_path: Path, launched: Started, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        treadle_run(tmp_path, "--precision", "fp16")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --precision: 'fp16' is not a precision. Choose one of: " in err
    assert "'bf16-mixed'" in err and "'bf16'" in err
    assert launched == []
