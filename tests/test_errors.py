from __future__ import annotations

import warnings

from treadle.errors import add_note, caller_stacklevel


def test_add_note_falls_back_to_the_notes_list_without_add_note() -> None:
    class NoAddNote(Exception):
        add_note = None  # what Python 3.10 looks like: no add_note method

    error = NoAddNote()
    add_note(error, "first")
    add_note(error, "second")
    assert error.__notes__ == ["first", "second"]


def test_add_note_uses_the_builtin_where_it_exists() -> None:
    error = ValueError("x")
    add_note(error, "context")
    assert error.__notes__ == ["context"]


def test_caller_stacklevel_points_at_the_first_frame_outside_treadle() -> None:
    # Called from a test module (not treadle.*), the warning belongs to this very line.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("here", UserWarning, stacklevel=caller_stacklevel())
    assert caught[0].filename == __file__
