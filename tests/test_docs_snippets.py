"""Every Python block of README.md and docs/*.md runs as written, each in a fresh interpreter.

A block that cannot run alone is preceded by ``<!-- snippet: skip (why) -->`` and is reported as skipped
with that reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
_BLOCK = re.compile(r"(?:<!-- snippet: skip \((?P<why>[^)]*)\) -->\n)?```python\n(?P<code>.*?)```", re.S)


def _snippets() -> list[object]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code")) + 1
            marks = [pytest.mark.skip(reason=match["why"])] if match["why"] else []
            found.append(pytest.param(match["code"], id=f"{page.name}:{line}", marks=marks))
    return found


@pytest.mark.parametrize("code", _snippets())
def test_snippet_runs(code: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def test_every_page_with_code_is_found() -> None:
    ids = [param.id for param in _snippets()]  # type: ignore[attr-defined]
    assert any(i.startswith("README.md") for i in ids) and any(i.startswith("trainer.md") for i in ids)
