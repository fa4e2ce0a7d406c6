"""The documentation site builds with ``mkdocs build --strict`` (no warning at all, griffe's included), and
its generated tables list what the code defines."""

from __future__ import annotations

import html
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from treadle import Callback
from treadle.trainer.config import LIGHTNING_ALIASES

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "index.html",
    "callbacks/index.html",
    "runtime/index.html",
    "distributed/index.html",
    "trainer/index.html",
    "builtin-callbacks/index.html",
    "loggers/index.html",
    "checkpoints/index.html",
    "reliability/index.html",
    "benchmarks/index.html",
    "lightning/index.html",
    "api/fabric/index.html",
    "api/callbacks/index.html",
    "api/strategies/index.html",
    "api/trainer/index.html",
    "api/loggers/index.html",
]


def _public_hooks() -> list[str]:
    # Worked out here without the docs hook module, so that the two cannot agree by sharing a bug.
    return sorted(
        name for name in dir(Callback) if name.startswith("on_") and callable(getattr(Callback, name))
    )


def _docs_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("treadle_docs_hooks", ROOT / "docs" / "_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert "WARNING" not in result.stderr, result.stderr
    return out


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page.read_text()))


def test_every_page_is_built(site: Path) -> None:
    missing = [page for page in PAGES if not (site / page).is_file()]
    assert not missing, f"pages not built: {missing}"


def test_the_callbacks_page_has_the_generated_hooks_table(site: Path) -> None:
    page = (site / "callbacks" / "index.html").read_text()
    assert "hooks-table" not in page, "the marker was not replaced"
    missing = [hook for hook in _public_hooks() if f"<td><code>{hook}</code></td>" not in page]
    assert not missing, f"hooks missing from the table: {missing}"
    assert "<td><code>on_train_batch_end</code></td>" in page


def test_the_hooks_table_lists_every_public_hook_of_callback() -> None:
    docs = _docs_hooks()
    assert sorted(docs.callback_hooks()) == _public_hooks()
    table = docs.hooks_table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(_public_hooks())
    for hook in _public_hooks():
        summary = inspect.getdoc(getattr(Callback, hook)).splitlines()[0]  # type: ignore[union-attr]
        assert any(row.startswith(f"| `{hook}` |") and summary in row for row in rows), hook


def test_the_lightning_page_has_the_generated_trainer_arguments_table(site: Path) -> None:
    text = _text(site / "lightning" / "index.html")
    for lightning, treadle in LIGHTNING_ALIASES.items():
        assert re.search(rf"\b{lightning}\s+{treadle}\b", text), lightning
    assert "val_check_interval" in text


def test_the_api_reference_is_rendered_from_docstrings(site: Path) -> None:
    fabric = _text(site / "api" / "fabric" / "index.html")
    assert "no_backward_sync" in fabric and "Skip gradient synchronisation" in fabric
    strategies = _text(site / "api" / "strategies" / "index.html")
    assert "DDPStrategy" in strategies and "FSDPStrategy" in strategies
