"""Planning a hook: what `callback.<hook>` is for each callback, and what proves that it has not changed.

Why a plan cannot go stale: before calling anything it runs cheap identity checks on what it cached:
``Cls.on_x is f0`` for each class (the type attribute cache makes this nearly free, and the lookup walks
the MRO, so a change on a base class is seen), ``'on_x' not in vars(cb)`` for each instance (an instance
override), and for callbacks that do not implement the hook, that neither their classes nor their
instance dict gained it. If any check fails, the plan is rebuilt first. Attributes that cannot be cached
this way (properties, classmethods, custom ``__getattribute__``, a value ``__getattr__`` supplies when the
plan is built) are looked up with ``getattr`` on every call instead. Not seen: a hook that ``__getattr__``
starts to supply after the plan was built (an ``nn.Module`` gaining a submodule named like a hook), since
asking ``__getattr__`` on every call would cost an exception per callback. Changes made while a call is
running take effect from the next call.
"""

from __future__ import annotations

import inspect
import types
import warnings
from collections.abc import Callable
from typing import Any

from treadle.callbacks.codegen import Entry, Guard, Plan, generate
from treadle.callbacks.hooks import NOOP_HOOKS, RANK_ZERO_ONLY_MARK
from treadle.callbacks.signature import accepted_keywords
from treadle.errors import caller_stacklevel

__all__ = ["MethodWrapper", "Planner"]

MethodWrapper = Callable[[object, str, Callable[..., Any]], Callable[..., Any]]

# Py_TPFLAGS_IMMUTABLETYPE: attributes of such classes (object, builtins) cannot change, so need no check.
_IMMUTABLE_TYPE = 1 << 8
_NOOP_IDS = frozenset(id(fn) for fn in NOOP_HOOKS)
_UNSEEN = object()  # what a dynamic entry has looked up before its first lookup


class Planner:
    """Builds the plans of one `CallbackDispatcher` from the settings every plan depends on.

    Changing `global_rank` or `wrapper` does not touch plans already built: the dispatcher drops them.
    """

    def __init__(self, global_rank: int) -> None:
        self.global_rank = global_rank
        self.wrapper: MethodWrapper | None = None

    def build(
        self,
        callbacks: list[object],
        hook: str,
        nargs: int,
        kwnames: tuple[str, ...],
        *,
        reshape: Plan,
        stale: Plan,
        dynamic: bool = False,
    ) -> Plan:
        """The plan for calling `hook` on `callbacks` with `nargs` positional arguments and `kwnames`.

        `reshape` receives calls of another shape and `stale` calls whose cached methods changed; with
        `dynamic`, every method is looked up on every call.
        """
        entries = []
        # `klass.__dict__` is a new proxy on every access, and the generated code checks each distinct
        # object once: sharing one proxy per class lets callbacks of one class share their class checks.
        class_dicts: dict[type, Any] = {}
        for index, callback in enumerate(callbacks):
            if self.global_rank != 0 and _is_rank_zero_only(callback):
                continue  # decided once here; set_global_rank() rebuilds every plan
            if dynamic or _has_custom_getattribute(type(callback)):
                entries.append(self._dynamic_entry(index, callback, hook, nargs, kwnames))
            else:
                entries.append(self._static_entry(index, callback, hook, nargs, kwnames, class_dicts))
        return generate(hook, nargs, kwnames, entries, reshape, stale)

    def _static_entry(
        self,
        index: int,
        callback: object,
        hook: str,
        nargs: int,
        kwnames: tuple[str, ...],
        class_dicts: dict[type, Any],
    ) -> Entry:
        cls = type(callback)
        instance_dict = _instance_dict(callback)
        owner = next((klass for klass in cls.__mro__ if hook in klass.__dict__), None)
        raw = None if owner is None else owner.__dict__[hook]
        if owner is not None and _is_data_descriptor(raw):
            # A property or slot named like the hook wins over the instance dict and may compute a new
            # value on every access: nothing to cache.
            return self._dynamic_entry(index, callback, hook, nargs, kwnames)

        if instance_dict is not None and hook in instance_dict:
            value = instance_dict[hook]
            guards: list[Guard] = [("instance_is", instance_dict, value)]
            return self._value_entry(index, callback, hook, value, nargs, kwnames, guards, pass_self=False)

        instance_guard: list[Guard] = [] if instance_dict is None else [("absent", instance_dict)]
        if owner is None:
            if getattr(cls, "__getattr__", None) is not None and getattr(callback, hook, None) is not None:
                # Supplied by __getattr__ (a proxy, a submodule of an nn.Module): ask again on every call.
                return self._dynamic_entry(index, callback, hook, nargs, kwnames)
            class_guards: list[Guard] = [
                ("absent", class_dicts.setdefault(klass, klass.__dict__))
                for klass in cls.__mro__
                if not klass.__flags__ & _IMMUTABLE_TYPE
            ]
            return Entry(index, callback, "skip", guards=class_guards + instance_guard)

        if isinstance(raw, types.FunctionType):
            value, pass_self = raw, True
        elif isinstance(raw, staticmethod) or not hasattr(type(raw), "__get__"):
            value, pass_self = getattr(cls, hook), False  # the wrapped function, or the object itself
        else:
            # A classmethod or another descriptor: binding creates a new object on every access.
            return self._dynamic_entry(index, callback, hook, nargs, kwnames)
        if getattr(cls, hook) is not value:  # not identity-stable, so the guard below would always fail
            return self._dynamic_entry(index, callback, hook, nargs, kwnames)
        guards = [("class_is", cls, value), *instance_guard]
        return self._value_entry(index, callback, hook, value, nargs, kwnames, guards, pass_self=pass_self)

    def _value_entry(
        self,
        index: int,
        callback: object,
        hook: str,
        value: Any,
        nargs: int,
        kwnames: tuple[str, ...],
        guards: list[Guard],
        *,
        pass_self: bool,
    ) -> Entry:
        method = self._resolve(callback, hook, value, class_function=pass_self, warn=True)
        if method is None:
            return Entry(index, callback, "skip", guards=guards)
        keywords = accepted_keywords(method, nargs, kwnames, callback, index, hook)
        if self.wrapper is not None:
            # The wrapper receives the bound method, so the plan calls what it returns without `callback`.
            target, pass_self = self.wrapper(callback, hook, method), False
        else:
            target = value if pass_self else method
        return Entry(index, callback, "call", target, pass_self=pass_self, keywords=keywords, guards=guards)

    def _resolve(self, callback: object, hook: str, value: Any, *, class_function: bool, warn: bool) -> Any:
        """What `callback.<hook>` evaluates to, given its raw `value` (a plain function found on the class
        when `class_function`), or None when this callback is to be skipped."""
        if value is None:
            return None
        if not callable(value):
            if warn:
                warnings.warn(
                    f"`{type(callback).__name__}.{hook}` is a {type(value).__name__}, not a method, so hook "
                    f"`{hook}` skips this callback. Make it a method, or set it to None to skip it silently.",
                    UserWarning,
                    stacklevel=caller_stacklevel(),
                )
            return None
        if id(getattr(value, "__func__", value)) in _NOOP_IDS:
            return None  # Callback's own no-op, not overridden
        if self.global_rank != 0 and getattr(value, RANK_ZERO_ONLY_MARK, False) is True:
            return None
        return types.MethodType(value, callback) if class_function else value

    def _dynamic_entry(
        self, index: int, callback: object, hook: str, nargs: int, kwnames: tuple[str, ...]
    ) -> Entry:
        return Entry(index, callback, "dynamic", _DynamicMethod(self, index, callback, hook, nargs, kwnames))


class _DynamicMethod:
    """Looks the hook up with getattr on every call, for attributes a plan cannot cache.

    Returns a tuple: empty when nothing was called, else the method's return value.
    """

    def __init__(
        self,
        planner: Planner,
        index: int,
        callback: object,
        hook: str,
        nargs: int,
        kwnames: tuple[str, ...],
    ) -> None:
        self._planner = planner
        self._index = index
        self._callback = callback
        self._hook = hook
        self._nargs = nargs
        self._kwnames = kwnames
        self._seen: tuple[object, object] = (_UNSEEN, _UNSEEN)  # (function, self) of the last attribute
        self._target: Any = None
        self._keywords: tuple[str, ...] | None = ()
        # Resolve once now, so that warnings and bind errors come at plan time as for cached methods.
        self._refresh(getattr(callback, hook, None), warn=True)

    def _refresh(self, value: Any, *, warn: bool) -> None:
        self._seen = (getattr(value, "__func__", value), getattr(value, "__self__", None))
        method = self._planner._resolve(self._callback, self._hook, value, class_function=False, warn=warn)
        if method is None:
            self._target = None
            return
        self._keywords = accepted_keywords(
            method, self._nargs, self._kwnames, self._callback, self._index, self._hook
        )
        wrapper = self._planner.wrapper
        self._target = method if wrapper is None else wrapper(self._callback, self._hook, method)

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        value = getattr(self._callback, self._hook, None)
        func, owner = self._seen
        if getattr(value, "__func__", value) is not func or getattr(value, "__self__", None) is not owner:
            self._refresh(value, warn=False)
        if self._target is None:
            return ()
        if self._keywords is not None:
            kwargs = {name: kwargs[name] for name in self._keywords}
        return (self._target(*args, **kwargs),)


def _is_rank_zero_only(callback: object) -> bool:
    return getattr(callback, "rank_zero_only", False) is True


def _has_custom_getattribute(cls: type) -> bool:
    # Builtin types are fine: whatever their __getattribute__ does cannot change after we look.
    return any(
        "__getattribute__" in klass.__dict__ for klass in cls.__mro__ if not klass.__flags__ & _IMMUTABLE_TYPE
    ) or any(
        "__getattribute__" in meta.__dict__
        for meta in inspect.getmro(type(cls))
        if not meta.__flags__ & _IMMUTABLE_TYPE
    )


def _is_data_descriptor(obj: object) -> bool:
    return hasattr(type(obj), "__set__") or hasattr(type(obj), "__delete__")


def _instance_dict(callback: object) -> dict[str, Any] | None:
    try:
        instance_dict = object.__getattribute__(callback, "__dict__")
    except AttributeError:
        return None
    return instance_dict if type(instance_dict) is dict else None
