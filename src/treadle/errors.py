"""Making errors and warnings point at the right place: notes on exceptions, warnings at the user's line."""

from __future__ import annotations

import sys


def add_note(exc: BaseException, note: str) -> None:
    """`BaseException.add_note`, also on Python 3.10 where it does not exist yet (PEP 678)."""
    add = getattr(exc, "add_note", None)
    if add is not None:
        add(note)
        return
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        try:
            exc.__notes__ = notes  # type: ignore[attr-defined,unused-ignore]
        except AttributeError:  # an exception type that forbids attributes: nothing to attach to
            return
    notes.append(note)


def caller_stacklevel() -> int:
    """The `stacklevel` that makes a warning point at the first frame outside treadle."""
    level = 1
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("treadle."):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
