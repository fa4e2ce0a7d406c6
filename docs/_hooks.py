"""MkDocs hook: fills marker comments in pages with tables generated from the code.

``<!-- hooks-table -->`` becomes the hooks of `treadle.Callback`; ``<!-- lightning-trainer-table -->`` the
Lightning Trainer arguments that treadle's Trainer accepts or refuses. Both are built when the site is
built, so they list exactly what the code in ``src/`` defines.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- hooks-table -->"
LIGHTNING_MARKER = "<!-- lightning-trainer-table -->"
_SRC = Path(__file__).resolve().parents[1] / "src"


def _import_src() -> None:
    # mkdocs imports this file before the mkdocstrings handler's `paths: [src]` applies.
    if str(_SRC) not in sys.path:
        sys.path.insert(0, str(_SRC))


def _treadle_hooks() -> tuple[type, frozenset[str], frozenset[str]]:
    _import_src()
    from treadle.callbacks.hooks import FABRIC_HOOKS, TRAINER_HOOKS, Callback

    return Callback, frozenset(FABRIC_HOOKS), frozenset(TRAINER_HOOKS)


def callback_hooks() -> list[str]:
    """Every public hook method of `treadle.Callback`, in the order the class defines them."""
    callback, _, _ = _treadle_hooks()
    return [
        name for name, value in vars(callback).items() if name.startswith("on_") and inspect.isfunction(value)
    ]


def hooks_table() -> str:
    """The Markdown table: hook, signature, who fires it (Fabric's own hooks fire in the Trainer too), and
    the first line of its docstring."""
    callback, fabric_hooks, trainer_hooks = _treadle_hooks()
    rows = ["| hook | signature | fired by | when |", "|---|---|---|---|"]
    for name in callback_hooks():
        method = vars(callback)[name]
        fired_by = "Fabric" if name in fabric_hooks else "Trainer" if name in trainer_hooks else "-"
        rows.append(f"| `{name}` | `{_signature(method)}` | {fired_by} | {_cell(_summary(method))} |")
    return "\n".join(rows)


def _signature(method: Any) -> str:
    """The parameters after ``self``, without annotations (under postponed annotations they are strings)."""
    signature = inspect.signature(method)
    parameters = [
        parameter.replace(annotation=inspect.Parameter.empty)
        for parameter in list(signature.parameters.values())[1:]
    ]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


def _summary(method: Any) -> str:
    lines = (inspect.getdoc(method) or "").strip().splitlines()
    return lines[0] if lines else ""


def lightning_trainer_table() -> str:
    """The Markdown table: Lightning Trainer argument, what treadle's Trainer does with it."""
    _import_src()
    from treadle.trainer import config

    rows = ["| Lightning `Trainer(...)` | treadle `Trainer(...)` |", "|---|---|"]
    for lightning, treadle in config.LIGHTNING_ALIASES.items():
        rows.append(f"| `{lightning}` | `{treadle}` (accepted under either name) |")
    # What the TypeError for each refused argument says to write instead.
    for lightning, advice in config._NOT_TAKEN.items():
        rows.append(f"| `{lightning}` | not taken: {_cell(advice)} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, hooks_table())
    if LIGHTNING_MARKER in markdown:
        markdown = markdown.replace(LIGHTNING_MARKER, lightning_trainer_table())
    return markdown
