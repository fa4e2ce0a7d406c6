"""Compiling a plan: the function `CallbackDispatcher.call` runs for one hook and call shape.

Why code generation: a generic loop that calls ``method(*args, **filtered)`` for each callback costs about
three times a hand-written loop, because every ``**`` splat builds a dict. So each plan is compiled, as
dataclasses and attrs compile ``__init__``, into a small function that calls every method directly with
explicit keywords (``return [f0(cb0, loss=k0), f1(cb1)]``). Only validated identifiers (the hook name and
keyword names) are written into the source; every object is bound as a default argument, the cheapest
variable to read. `help(plan)` shows a plan's source.

`treadle.callbacks.plan` decides what goes in: one `Entry` per callback, with the guards that prove what
it cached is still current.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from treadle.errors import add_note

__all__ = ["Entry", "Guard", "Plan", "generate", "is_identifier"]

Plan = Callable[[tuple[Any, ...], dict[str, Any]], list[Any]]

# Checks the generated code runs before dispatching. `attr` is the hook name.
#   ("class_is", cls, obj)     cls.attr is obj
#   ("absent", mapping)        attr not in mapping     (a class __dict__ proxy or an instance __dict__)
#   ("instance_is", d, obj)    attr in d and d[attr] is obj
Guard = tuple[Any, ...]


@dataclass
class Entry:
    """What a plan does with one callback."""

    index: int
    callback: object
    action: Literal["call", "skip", "dynamic"]
    target: Any = None  # the callable the generated code invokes
    pass_self: bool = False  # target is a plain function found on the class: call target(callback, ...)
    keywords: tuple[str, ...] | None = ()  # keyword names to pass; None passes all of them
    guards: list[Guard] = field(default_factory=list)


def is_identifier(name: str) -> bool:
    """Whether ``name`` can be a method or parameter name (the only user strings written into plan code)."""
    return name.isidentifier() and not keyword.iskeyword(name)


def generate(
    hook: str,
    nargs: int,
    kwnames: tuple[str, ...],
    entries: list[Entry],
    reshape: Plan,
    stale: Plan,
) -> Plan:
    """Compile the entries into a function ``plan(args, kwargs) -> list``; see the module docstring.

    `reshape` takes calls of another shape than (`nargs`, `kwnames`), `stale` calls whose guards fail.
    Every object the plan uses is bound as a default argument: reading a local is the cheapest lookup
    there is, and positional defaults are copied into the frame in one go (keyword-only defaults would
    be looked up one by one on every call). Only `hook` and keyword names that are identifiers appear in
    the source.
    """
    bound: dict[str, object] = {}
    names: dict[int, str] = {}  # id(object) -> its name in the generated code

    def bind(obj: object, prefix: str) -> str:
        if id(obj) not in names:
            names[id(obj)] = f"{prefix}{len(bound)}"
            bound[names[id(obj)]] = obj
        return names[id(obj)]

    attr, literal = hook, repr(hook)  # `hook` was checked to be an identifier
    checks: dict[str, None] = {}  # an ordered set: a class shared by several callbacks is checked once
    for entry in entries:
        for guard in entry.guards:
            if guard[0] == "class_is":
                checks[f"{bind(guard[1], 'T')}.{attr} is {bind(guard[2], 'f')}"] = None
            elif guard[0] == "absent":
                checks[f"{literal} not in {bind(guard[1], 'd')}"] = None
            else:
                d = bind(guard[1], "d")
                checks[f"{literal} in {d} and {d}[{literal}] is {bind(guard[2], 'v')}"] = None
    active = [entry for entry in entries if entry.action != "skip"]

    body = []
    values = [f"k{n}" for n in range(len(kwnames))]
    if active:
        # 1. Is this call shaped like the one the plan was built for? Equal counts and every planned
        #    keyword present means the same names; their order does not change the filtering. (A plan
        #    that calls nothing is right for every shape.)
        shape = [
            "args" if nargs == 0 else f"len(args) != {nargs}",
            "kwargs" if not kwnames else f"len(kwargs) != {len(kwnames)}",
        ]
        body += [f"if {' or '.join(shape)}:", "    return reshape(args, kwargs)"]
        if kwnames:
            body.append("try:")
            body += [
                # A name that is not an identifier is bound, not written: only identifiers enter the source.
                f"    {value} = kwargs[{repr(name) if is_identifier(name) else bind(name, 'key')}]"
                for value, name in zip(values, kwnames, strict=True)
            ]
            body += ["except KeyError:", "    return reshape(args, kwargs)"]
    # 2. Is everything the plan cached still what attribute lookup would find?
    if checks:
        conditions = [f"{'and ' if n else ''}{check}" for n, check in enumerate(checks)]
        body += ["try:", "    fresh = (", *(f"        {condition}" for condition in conditions), "    )"]
        # e.g. the method was deleted from the class, so `Cls.on_x` raises
        body += ["except Exception:", "    fresh = False", "if not fresh:", "    return stale(args, kwargs)"]
    # 3. Call: one line per callback, so that the line an exception passed through names the callback.
    positional = [f"a{n}" for n in range(nargs)]
    if active and nargs:
        body.append(f"({', '.join(positional)},) = args")
    identifiers = {name: value for name, value in zip(kwnames, values, strict=True) if is_identifier(name)}
    calls: list[tuple[str, Entry]] = []
    for entry in active:
        if entry.action == "dynamic":
            calls.append((f"*{bind(entry.target, 'e')}(args, kwargs)", entry))
            continue
        arguments = [bind(entry.callback, "cb")] if entry.pass_self else []
        arguments += positional
        passed = kwnames if entry.keywords is None else entry.keywords
        if all(name in identifiers for name in passed):
            arguments += [f"{name}={identifiers[name]}" for name in passed]
        else:  # a keyword that is not an identifier can only go to a **kwargs method: pass them all
            arguments.append("**kwargs")
        calls.append((f"{bind(entry.target, 'm')}({', '.join(arguments)})", entry))
    first_call = 0
    if not calls:
        body.append("return []")
    else:
        body += ["try:", "    return ["]
        first_call = len(body)
        body += [f"        {text}," for text, _ in calls]
        body += ["    ]", "except BaseException as exc:", "    note(exc)", "    raise"]

    where: dict[int, Entry] = {}

    def note(exc: BaseException) -> None:
        traceback = exc.__traceback__  # its first entry is the plan's frame, where exc was caught
        entry = where.get(traceback.tb_lineno) if traceback is not None else None
        if entry is not None:
            name = type(entry.callback).__name__
            add_note(exc, f"raised by callback `{name}` (index {entry.index}) in hook `{hook}`")

    defaults = ", ".join(f"{name}={name}" for name in bound)
    source = "\n".join([f"def plan(args, kwargs, {defaults}):", *(f"    {line}" for line in body)]) + "\n"
    for offset, (_, entry) in enumerate(calls):
        where[first_call + offset + 2] = entry  # body[n] is on line n + 2: the signature is line 1
    # The slow paths are globals, so they cost nothing on calls that do not take them. With __name__ set,
    # a warning raised while planning skips the plan's frame as it skips treadle's own.
    namespace: dict[str, Any] = dict(bound, reshape=reshape, stale=stale, note=note, __name__=__name__)
    exec(compile(source, f"<treadle plan for {hook}>", "exec"), namespace)
    plan: Plan = namespace["plan"]
    plan.__doc__ = source  # for whoever debugs a dispatch: help(plan) shows the generated code
    return plan
