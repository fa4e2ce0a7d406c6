"""Checks of the arguments built-in callbacks share, so each says the same thing about the same mistake."""

from __future__ import annotations

from typing import Any

__all__ = ["check_bool"]


def check_bool(owner: str, name: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False``; anything else is an error naming ``owner(name=value)``.

    A truthy string such as ``"no"`` would otherwise silently switch a feature on.

    Raises:
        TypeError: ``value`` is not a bool.

    Example::

        self.verbose = check_bool("EarlyStopping", "verbose", verbose)
    """
    if not isinstance(value, bool):
        raise TypeError(f"{owner}({name}={value!r}) must be True or False, e.g. {name}={not _truthy(value)}.")
    return value


def _truthy(value: Any) -> bool:
    try:
        return bool(value)
    except Exception:  # an object whose truth value is ambiguous (e.g. a tensor): suggest True
        return False
