"""How `fabric.call` finds callback methods and invokes them.

`call(hook, *args, **kwargs)` is on the hot path of every training step, so its work is split in two:

* Planning, once per (hook name, number of positional arguments, keyword names): find which callbacks
  implement the hook, look each method's signature up to decide which keywords it accepts, check that the
  call can bind, and apply rank-zero filtering.
* Dispatching, on every call: run the plan.

Why code generation: a generic loop that calls ``method(*args, **filtered)`` for each callback costs about
three times a hand-written loop, because every ``**`` splat builds a dict. So each plan is compiled, as
dataclasses and attrs compile ``__init__``, into a small function that calls every method directly with
explicit keywords (``return [f0(cb0, loss=k0), f1(cb1)]``). Only validated identifiers (the hook name and
keyword names) are written into the source; every object is bound as a default argument, the cheapest
variable to read. `help(plan)` shows a plan's source.

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

import collections.abc
import inspect
import keyword
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from treadle.callbacks.hooks import NOOP_HOOKS, RANK_ZERO_ONLY_MARK, HookRegistry, caller_stacklevel

__all__ = ["CallbackDispatcher"]

Plan = Callable[[tuple[Any, ...], dict[str, Any]], list[Any]]
MethodWrapper = Callable[[object, str, Callable[..., Any]], Callable[..., Any]]

# Py_TPFLAGS_IMMUTABLETYPE: attributes of such classes (object, builtins) cannot change, so need no check.
_IMMUTABLE_TYPE = 1 << 8
# A plan whose checks fail again right after it was rebuilt this many times in a row (another thread
# mutating classes, or a descriptor that returns a new object each time) falls back to plain getattr.
_MAX_REBUILDS = 8
_NOOP_IDS = frozenset(id(fn) for fn in NOOP_HOOKS)
_UNSEEN = object()  # what a dynamic entry has looked up before its first lookup
_BINDABLE = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


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


# Checks the generated code runs before dispatching. `attr` is the hook name.
#   ("class_is", cls, obj)     cls.attr is obj
#   ("absent", mapping)        attr not in mapping     (a class __dict__ proxy or an instance __dict__)
#   ("instance_is", d, obj)    attr in d and d[attr] is obj
_Guard = tuple[Any, ...]


@dataclass
class _Entry:
    """What a plan does with one callback."""

    index: int
    callback: object
    action: Literal["call", "skip", "dynamic"]
    target: Any = None  # the callable the generated code invokes
    pass_self: bool = False  # target is a plain function found on the class: call target(callback, ...)
    keywords: tuple[str, ...] | None = ()  # keyword names to pass; None passes all of them
    guards: list[_Guard] = field(default_factory=list)


class CallbackDispatcher:
    """Calls a hook on every callback that implements it: the engine behind `fabric.call`.

    Callbacks are any objects; a callback implements hook ``on_x`` by having a method ``on_x``. See `call`
    for how arguments are delivered and errors reported.

    Args:
        callbacks: None, one callback object, or a list or tuple of them. The list is copied.
        strict_hooks: make every unknown ``on_*`` method an error instead of warning about likely typos.
        global_rank: this process's global rank, for rank-zero-only callbacks (see `set_global_rank`).
        registry: the known hook names to check callbacks against; a new `HookRegistry` by default.

    Raises:
        TypeError: `callbacks` is a string, dict, class or another value that is not a callback.
        ValueError: `strict_hooks` is true and a callback has an unknown ``on_*`` method.

    Example:
        >>> class Printer:
        ...     def on_train_batch_end(self, loss):
        ...         print(f"loss={loss}")
        >>> dispatcher = CallbackDispatcher([Printer()])
        >>> dispatcher.call("on_train_batch_end", loss=0.5, batch_idx=3)
        loss=0.5
        [None]
    """

    def __init__(
        self,
        callbacks: object = None,
        *,
        strict_hooks: bool = False,
        global_rank: int = 0,
        registry: HookRegistry | None = None,
    ) -> None:
        self.registry: HookRegistry = HookRegistry() if registry is None else registry
        self._strict_hooks = strict_hooks
        self._global_rank = _checked_rank(global_rank)
        self._callbacks: list[object] = []
        self._wrapper: MethodWrapper | None = None
        # Plans by (hook, number of positional arguments, keyword names). `_by_hook` holds the first plan
        # built for each hook, so that `call` can find it without building a key; that plan checks the shape
        # of the call itself and hands other shapes to `_call_shaped`.
        self._plans: dict[tuple[str, int, tuple[str, ...]], Plan] = {}
        self._by_hook: dict[str, Plan] = {}
        self._by_hook_key: dict[str, tuple[str, int, tuple[str, ...]]] = {}
        self._rebuild_depth = 0
        for position, callback in enumerate(_as_callback_list(callbacks)):
            self._validate(callback, f"callbacks[{position}]" if isinstance(callbacks, (list, tuple)) else "")
            self._callbacks.append(callback)

    @property
    def callbacks(self) -> tuple[object, ...]:
        """The registered callbacks, in call order (a snapshot; use `add` and `remove` to change it)."""
        return tuple(self._callbacks)

    def add(self, callback: object) -> None:
        """Register one more callback; it runs after the existing ones.

        Raises:
            TypeError: `callback` is a list, string, dict, class or None.
            ValueError: `strict_hooks` is true and the callback has an unknown ``on_*`` method.

        Example:
            >>> dispatcher = CallbackDispatcher()
            >>> dispatcher.add(object())
        """
        if isinstance(callback, (list, tuple)):
            raise TypeError(
                f"add(callback) takes one callback, got a {type(callback).__name__} of "
                f"{len(callback)}. Call add() once per callback."
            )
        self._validate(callback, "callback")
        self._callbacks.append(callback)
        self._invalidate()

    def remove(self, callback: object) -> None:
        """Unregister a callback, found by identity.

        Raises:
            ValueError: `callback` is not registered.

        Example:
            >>> cb = object()
            >>> dispatcher = CallbackDispatcher([cb])
            >>> dispatcher.remove(cb)
        """
        for position, registered in enumerate(self._callbacks):
            if registered is callback:
                del self._callbacks[position]
                self._invalidate()
                return
        names = ", ".join(type(cb).__name__ for cb in self._callbacks) or "none"
        raise ValueError(
            f"remove(callback={callback!r}): this object is not a registered callback (registered: {names}). "
            f"Pass the same instance that was given to `callbacks` or add()."
        )

    def set_global_rank(self, rank: int) -> None:
        """Set this process's global rank, which is known only after launch; rank-zero-only callbacks and
        methods are skipped on every other rank.

        Raises:
            TypeError: `rank` is not an int.
            ValueError: `rank` is negative.
        """
        self._global_rank = _checked_rank(rank)
        self._invalidate()

    def register_hook(self, name: str) -> None:
        """Declare a hook of your own, so callbacks implementing it are not reported as misspellings.

        Raises:
            TypeError: `name` is not a string.
            ValueError: `name` is not an identifier starting with ``on_``.

        Example:
            >>> CallbackDispatcher().register_hook("on_generate_samples")
        """
        self.registry.register(name)

    def wrap_methods(self, wrapper: MethodWrapper | None) -> None:
        """Route every call through ``wrapper(callback, hook_name, method)`` (for profiling); None removes it.

        The wrapper is applied when a plan is built and receives the bound method; the callable it returns
        is called with the same, already filtered, arguments. Exceptions still get the callback's note.

        Example:
            >>> def trace(callback, hook, method):
            ...     def traced(*args, **kwargs):
            ...         print("->", type(callback).__name__, hook)
            ...         return method(*args, **kwargs)
            ...     return traced
            >>> CallbackDispatcher().wrap_methods(trace)
        """
        if wrapper is not None and not callable(wrapper):
            raise TypeError(
                f"wrap_methods(wrapper={wrapper!r}): expected a callable taking (callback, hook_name, method) "
                f"and returning the callable to invoke, or None to remove the wrapper."
            )
        self._wrapper = wrapper
        self._invalidate()

    def call(self, hook_name: str, /, *args: Any, **kwargs: Any) -> list[Any]:
        """Call `hook_name` on every callback that implements it, in registration order.

        Positional arguments are passed unchanged; of the keyword arguments each method receives only those
        it declares (all of them if it takes ``**kwargs``). Callbacks without the method, or with it set to
        None, are skipped.

        Args:
            hook_name: the method name to call, e.g. ``"on_train_batch_end"``.
            *args: positional arguments for every method.
            **kwargs: keyword arguments, filtered per method.

        Returns:
            The values returned by the methods that were called, in order.

        Raises:
            TypeError: `hook_name` is not a string, or a method requires a parameter the call does not
                supply (raised before any callback runs).
            ValueError: `hook_name` is not a Python identifier.
            Exception: whatever a callback raises, unchanged but with a note naming the callback and hook;
                the callbacks after it are not called.

        Example:
            >>> class Count:
            ...     def on_validation_end(self):
            ...         return 1
            >>> CallbackDispatcher([Count(), Count()]).call("on_validation_end", trainer=None)
            [1, 1]
        """
        try:
            plan = self._by_hook[hook_name]
        except (KeyError, TypeError):  # the hook's first call, or a hook_name that is not a str
            return self._call_shaped(hook_name, args, kwargs)
        return plan(args, kwargs)

    # Planning.

    def _validate(self, callback: object, where: str) -> None:
        _check_callback_value(callback, where)
        self.registry.check_callback(callback, strict=self._strict_hooks)

    def _invalidate(self) -> None:
        self._plans.clear()
        self._by_hook.clear()
        self._by_hook_key.clear()

    def _call_shaped(self, hook: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        if isinstance(hook, str) and type(hook) is not str:
            hook = str.__str__(hook)  # a str subclass such as a str Enum: plans are keyed by the plain name
        key = (hook, len(args), tuple(kwargs))
        try:
            plan = self._plans[key]
        except (KeyError, TypeError):
            plan = self._build_plan(hook, len(args), tuple(kwargs))
        return plan(args, kwargs)

    def _build_plan(self, hook: object, nargs: int, kwnames: tuple[str, ...]) -> Plan:
        if not isinstance(hook, str):
            raise TypeError(
                f"call(hook_name={hook!r}): the hook name must be a str, got {type(hook).__name__}. "
                f"Pass the method name, e.g. fabric.call('on_train_batch_end', ...)."
            )
        if type(hook) is not str or not _is_identifier(hook):
            raise ValueError(
                f"call(hook_name={hook!r}) is not a valid hook name: hooks are method names, so they must be "
                f"Python identifiers such as 'on_train_batch_end'."
            )
        if any(type(name) is not str for name in kwnames):
            raise TypeError(
                f"call({hook!r}, ...): keyword names must be plain str, got "
                f"{[name for name in kwnames if type(name) is not str]!r}. Pass str(name) as the key."
            )
        self.registry.record_call(hook)
        key = (hook, nargs, kwnames)
        plan = self._compile(hook, nargs, kwnames, dynamic=False)
        self._plans[key] = plan
        if self._by_hook_key.setdefault(hook, key) == key:
            self._by_hook[hook] = plan
        return plan

    def _compile(self, hook: str, nargs: int, kwnames: tuple[str, ...], *, dynamic: bool) -> Plan:
        entries = []
        for index, callback in enumerate(self._callbacks):
            if self._global_rank != 0 and _is_rank_zero_only(callback):
                continue  # decided once here; set_global_rank() rebuilds every plan
            if dynamic or _has_custom_getattribute(type(callback)):
                entries.append(self._dynamic_entry(index, callback, hook, nargs, kwnames))
            else:
                entries.append(self._static_entry(index, callback, hook, nargs, kwnames))

        def reshape(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
            return self._call_shaped(hook, args, kwargs)

        def stale(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
            # Something the plan cached has changed: rebuild it, then dispatch with the new one.
            self._rebuild_depth += 1
            try:
                if self._rebuild_depth > _MAX_REBUILDS:
                    return self._compile(hook, nargs, kwnames, dynamic=True)(args, kwargs)
                return self._build_plan(hook, nargs, kwnames)(args, kwargs)
            finally:
                self._rebuild_depth -= 1

        return _generate(hook, nargs, kwnames, entries, reshape, stale)

    def _static_entry(
        self, index: int, callback: object, hook: str, nargs: int, kwnames: tuple[str, ...]
    ) -> _Entry:
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
            guards: list[_Guard] = [("instance_is", instance_dict, value)]
            return self._value_entry(index, callback, hook, value, nargs, kwnames, guards, pass_self=False)

        instance_guard: list[_Guard] = [] if instance_dict is None else [("absent", instance_dict)]
        if owner is None:
            if getattr(cls, "__getattr__", None) is not None and getattr(callback, hook, None) is not None:
                # Supplied by __getattr__ (a proxy, a submodule of an nn.Module): ask again on every call.
                return self._dynamic_entry(index, callback, hook, nargs, kwnames)
            class_guards: list[_Guard] = [
                ("absent", klass.__dict__) for klass in cls.__mro__ if not klass.__flags__ & _IMMUTABLE_TYPE
            ]
            return _Entry(index, callback, "skip", guards=class_guards + instance_guard)

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
        guards: list[_Guard],
        *,
        pass_self: bool,
    ) -> _Entry:
        method = self._resolve(callback, hook, value, class_function=pass_self, warn=True)
        if method is None:
            return _Entry(index, callback, "skip", guards=guards)
        keywords = _accepted_keywords(method, nargs, kwnames, callback, index, hook)
        if self._wrapper is not None:
            return _Entry(
                index, callback, "call", self._wrapper(callback, hook, method), False, keywords, guards
            )
        target = value if pass_self else method
        return _Entry(index, callback, "call", target, pass_self, keywords, guards)

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
        if self._global_rank != 0 and getattr(value, RANK_ZERO_ONLY_MARK, False) is True:
            return None
        return types.MethodType(value, callback) if class_function else value

    def _dynamic_entry(
        self, index: int, callback: object, hook: str, nargs: int, kwnames: tuple[str, ...]
    ) -> _Entry:
        resolver = _DynamicMethod(self, index, callback, hook, nargs, kwnames)
        return _Entry(index, callback, "dynamic", resolver)


class _DynamicMethod:
    """Looks the hook up with getattr on every call, for attributes a plan cannot cache.

    Returns a tuple: empty when nothing was called, else the method's return value.
    """

    def __init__(
        self,
        dispatcher: CallbackDispatcher,
        index: int,
        callback: object,
        hook: str,
        nargs: int,
        kwnames: tuple[str, ...],
    ) -> None:
        self._dispatcher = dispatcher
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
        method = self._dispatcher._resolve(self._callback, self._hook, value, class_function=False, warn=warn)
        if method is None:
            self._target = None
            return
        self._keywords = _accepted_keywords(
            method, self._nargs, self._kwnames, self._callback, self._index, self._hook
        )
        wrapper = self._dispatcher._wrapper
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


def _generate(
    hook: str,
    nargs: int,
    kwnames: tuple[str, ...],
    entries: list[_Entry],
    reshape: Callable[[tuple[Any, ...], dict[str, Any]], list[Any]],
    stale: Callable[[tuple[Any, ...], dict[str, Any]], list[Any]],
) -> Plan:
    """Compile the plan into a function ``plan(args, kwargs) -> list``; see the module docstring.

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
                f"    {value} = kwargs[{repr(name) if _is_identifier(name) else bind(name, 'key')}]"
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
    identifiers = {name: value for name, value in zip(kwnames, values, strict=True) if _is_identifier(name)}
    calls: list[tuple[str, _Entry]] = []
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

    where: dict[int, _Entry] = {}

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


def _accepted_keywords(
    method: Any, nargs: int, kwnames: tuple[str, ...], callback: object, index: int, hook: str
) -> tuple[str, ...] | None:
    """Keyword names `method` accepts (None: all), after checking that the call can bind."""
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


def _checked_rank(rank: object) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(
            f"global_rank={rank!r}: expected an int (the process's global rank, 0 on one process)."
        )
    if rank < 0:
        raise ValueError(f"global_rank={rank}: a rank cannot be negative. Pass 0 for a single process.")
    return rank


def _as_callback_list(callbacks: object) -> list[object]:
    if callbacks is None:
        return []
    if isinstance(callbacks, (list, tuple)):
        return list(callbacks)
    if isinstance(callbacks, (set, frozenset)):
        raise TypeError(
            f"callbacks={callbacks!r} is a {type(callbacks).__name__}, whose order is undefined. "
            f"Pass a list: callbacks run in list order."
        )
    if isinstance(callbacks, (types.GeneratorType, collections.abc.Iterator)):
        raise TypeError(f"callbacks={callbacks!r} is an iterator. Pass a list: callbacks=list(...).")
    return [callbacks]


def _check_callback_value(value: object, where: str) -> None:
    label = where or "callbacks"
    if value is None and where:
        raise TypeError(f"{label}=None is not a callback. Leave it out of the list.")
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(
            f"{label}={value!r} is a {type(value).__name__}, not a callback object. Pass instances, "
            f"e.g. callbacks=[MyCallback()]."
        )
    if isinstance(value, collections.abc.Mapping):
        raise TypeError(
            f"{label}={value!r} is a mapping, not a callback object. Pass a list of callback instances, "
            f"e.g. callbacks=list(my_dict.values())."
        )
    if isinstance(value, type):
        raise TypeError(
            f"{label}={value.__qualname__} is a class, not a callback instance. Instantiate it: "
            f"callbacks=[{value.__qualname__}()]."
        )
    if where.startswith("callbacks[") and isinstance(value, (list, tuple)):
        raise TypeError(f"{label} is a {type(value).__name__}: pass a flat list of callbacks.")


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
