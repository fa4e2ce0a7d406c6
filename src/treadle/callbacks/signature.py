"""Which keyword arguments a callback method accepts, and the error when it cannot take the call at all.

Both are decided once per plan, so that `fabric.call` filters keywords without inspecting signatures, and a
method that requires an argument the hook does not pass fails before any callback runs.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["accepted_keywords"]

_BINDABLE = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def accepted_keywords(
    method: Any, nargs: int, kwnames: tuple[str, ...], callback: object, index: int, hook: str
) -> tuple[str, ...] | None:
    """Keyword names `method` accepts (None: all), after checking that the call can bind.

    Raises:
        TypeError: `method` cannot take `nargs` positional arguments and the keywords it accepts; the
            message names `callback` (at `index`) and `hook`.
    """
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):  # some builtins have no signature: pass everything, as a loop would
        return None
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        keywords: tuple[str, ...] | None = None
        passed = kwnames
    else:
        keywords = tuple(name for name in kwnames if name in params and params[name].kind in _BINDABLE)
        passed = keywords
    try:
        signature.bind(*range(nargs), **dict.fromkeys(passed))
    except TypeError as exc:
        raise _bind_error(signature, nargs, kwnames, passed, callback, index, hook, exc) from None
    return keywords


def _bind_error(
    signature: inspect.Signature,
    nargs: int,
    kwnames: tuple[str, ...],
    passed: tuple[str, ...],
    callback: object,
    index: int,
    hook: str,
    exc: TypeError,
) -> TypeError:
    where = f"Callback `{type(callback).__name__}` (index {index}) cannot take hook `{hook}`"
    offered = (
        f"The call passes {nargs} positional argument(s) and the keyword arguments "
        f"({', '.join(kwnames) or 'none'})"
    )
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:nargs]
    filled = {p.name for p in positional} | set(passed)
    missing = [
        p.name
        for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in filled
    ]
    if missing:
        names = ", ".join(f"`{name}`" for name in missing)
        return TypeError(
            f"{where}: its method `{hook}{signature}` requires {names}, which the call does not supply. "
            f"{offered}. Give {names} a default value (e.g. `{missing[0]}=None`), or accept only arguments "
            f"the hook passes."
        )
    return TypeError(
        f"{where}: its method `{hook}{signature}` does not accept the call ({exc}). {offered}. "
        f"Change the method's parameters to match how the hook is called."
    )
