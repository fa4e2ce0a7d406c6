"""Set-up objects keep the user's types: a typed script passes ``mypy --strict`` with exactly the expected errors."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "user_script.py"
SRC = HERE.parents[1] / "src"


def _expected() -> set[tuple[int, str]]:
    lines = SCRIPT.read_text().splitlines()
    return {
        (number, match[1])
        for number, line in enumerate(lines, start=1)
        if (match := re.search(r"# error: ([a-z-]+)$", line))
    }


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="needs mypy (the dev extra)")
def test_mypy_strict_sees_the_users_own_types(tmp_path: Path) -> None:
    env = {**os.environ, "MYPYPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path),
         "--config-file", os.devnull, str(SCRIPT)],
        capture_output=True, text=True, timeout=300, env=env, cwd=HERE.parents[1],
    )  # fmt: skip
    reported = {
        (int(match[1]), match[2])
        for match in re.finditer(r"user_script\.py:(\d+): error: .*\[([a-z-]+)\]", result.stdout)
    }
    assert reported == _expected(), result.stdout + result.stderr


def test_the_typed_script_runs() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
