"""How `fabric.call` finds callback methods and invokes them.

`call(hook, *args, **kwargs)` is on the hot path of every training step, so its work is split in two:

* Planning, once per (hook name, number of positional arguments, keyword names): find which callbacks
  implement the hook, look each method's signature up to decide which keywords it accepts, check that the
  call can bind, and apply rank-zero filtering. `treadle.callbacks.plan` decides what each callback needs
  and why a plan cannot go stale; `treadle.callbacks.codegen` compiles the plan into a function.
* Dispatching, on every call: run the plan. This module registers callbacks, caches the plans and
  rebuilds one when the callbacks or their methods change.
"""

from __future__ import annotations

import collections.abc
import copy
import functools
import types
from typing import Any, TypeGuard

from treadle.callbacks.codegen import Plan, is_identifier
from treadle.callbacks.hooks import HookRegistry
from treadle.callbacks.plan import MethodWrapper, Planner

__all__ = ["CallbackDispatcher"]

# A plan whose checks fail again right after it was rebuilt this many times in a row (another thread
# mutating classes, or a descriptor that returns a new object each time) falls back to plain getattr.
_MAX_REBUILDS = 8


class CallbackDispatcher:
    """Calls a hook on every callback that implements it: the engine behind `fabric.call`.

    Callbacks are any objects; a callback implements hook ``on_x`` by having a method ``on_x``. See `call`
    for how arguments are delivered and errors reported.

    Args:
        callbacks: None, one callback object, or a sequence of them (a list, tuple, deque, ...; not a set or
            an iterator, whose order is undefined or used up). The sequence is copied.
        strict_hooks: make every unknown ``on_*`` method an error instead of warning about likely typos.
        global_rank: this process's global rank, for rank-zero-only callbacks (see `set_global_rank`).
        registry: the known hook names to check callbacks against; a new `HookRegistry` by default.

    Raises:
        TypeError: `callbacks` is a string, dict, set, iterator, class or another value that is not a
            callback.
        ValueError: one callback object is listed twice (its hooks would run twice), or `strict_hooks` is
            true and a callback has an unknown ``on_*`` method.

    A dispatcher can be pickled and deep-copied (``strategy="ddp_spawn"`` sends it to each new process) when
    its callbacks and wrapper can: the compiled plans are left out and rebuilt on the copy's first calls.

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
        self._planner = Planner(_checked_rank(global_rank))  # also holds the method wrapper
        self._callbacks: list[object] = []
        # Plans by (hook, number of positional arguments, keyword names). `_by_hook` holds the first plan
        # built for each hook, so that `call` can find it without building a key; that plan checks the shape
        # of the call itself and hands other shapes to `_call_shaped`.
        self._plans: dict[tuple[str, int, tuple[str, ...]], Plan] = {}
        self._by_hook = PlanTable(self)
        self._by_hook_key: dict[str, tuple[str, int, tuple[str, ...]]] = {}
        self._rebuild_depth = 0
        for position, callback in enumerate(_as_callback_list(callbacks)):
            self._validate(callback, f"callbacks[{position}]" if _is_callback_sequence(callbacks) else "")
            first = self._position_of(callback)
            if first is not None:
                name = type(callback).__name__
                raise ValueError(
                    f"callbacks[{position}] is the same {name} object as callbacks[{first}]: every hook would run "
                    f"on it twice (e.g. a timer would count each batch twice). List each callback object once, "
                    f"or create a second {name}(...) if you want two."
                )
            self._callbacks.append(callback)

    def __getstate__(self) -> dict[str, Any]:
        # Plans are functions compiled with exec, which pickle cannot send, and they hold this dispatcher's
        # callbacks, which a deep copy must not keep calling: the copy starts with none.
        state = self.__dict__.copy()
        state["_callbacks"] = list(self._callbacks)  # a shallow copy gets its own list to add to
        state["_plans"], state["_by_hook_key"] = {}, {}  # `_by_hook` pickles empty (PlanTable.__reduce__)
        state["_rebuild_depth"] = 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._by_hook.dispatcher is not self:  # a shallow copy, still holding the original's table
            self._by_hook = PlanTable(self)
            self._planner = copy.copy(self._planner)  # and its own rank and method wrapper from now on

    @property
    def plans(self) -> PlanTable:
        """The compiled plan of each hook, by name: ``plans[hook]((), kwargs)`` is ``call_with(hook, kwargs)``
        without the Python frame in between, for the hooks the runtime fires on every step.

        A live table: a plan that finds its callbacks changed rebuilds itself and takes its place here, and
        a hook not planned yet gets a stand-in that plans on its first call. Do not modify it.
        """
        return self._by_hook

    @property
    def callbacks(self) -> tuple[object, ...]:
        """The registered callbacks, in call order (a snapshot; use `add` and `remove` to change it)."""
        return tuple(self._callbacks)

    def add(self, callback: object) -> None:
        """Register one more callback; it runs after the existing ones.

        Raises:
            TypeError: `callback` is a list or another sequence, a string, dict, class or None.
            ValueError: `callback` is already registered (the same object), or `strict_hooks` is true and the
                callback has an unknown ``on_*`` method.

        Example:
            >>> dispatcher = CallbackDispatcher()
            >>> dispatcher.add(object())
        """
        if _is_callback_sequence(callback):
            raise TypeError(
                f"add(callback) takes one callback, got a {type(callback).__name__} of "
                f"{len(callback)}. Call add() once per callback."
            )
        self._validate(callback, "callback")
        first = self._position_of(callback)
        if first is not None:
            raise ValueError(
                f"add(callback): this {type(callback).__name__} object is already registered (callbacks[{first}]); "
                "every hook would run on it twice. Register it once, or remove() it before adding it again."
            )
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
        self._planner.global_rank = _checked_rank(rank)
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
        self._planner.wrapper = wrapper
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
            ValueError: `hook_name` is not a Python identifier, starts with ``_``, or (under
                ``strict_hooks``) is neither a known hook nor implemented by any callback.

        A hook that no callback implements and that is not known (built in, declared with `register_hook`,
        or fired before) is reported once with a `UserWarning` when it looks like a misspelling of a known
        one, since it would never run anything.
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
            plan = self._by_hook[hook_name]  # a stand-in that plans, on the hook's first call
        except TypeError:  # an unhashable hook_name: let planning say what is wrong with it
            return self._call_shaped(hook_name, args, kwargs)
        return plan(args, kwargs)

    def call_with(self, hook_name: str, kwargs: dict[str, Any], /) -> list[Any]:
        """`call` with keyword arguments only, given as a dict that is neither copied nor changed.

        A dict built once can serve several hooks, and a call skips packing ``**kwargs`` (the runtime goes one
        step further with `plans`). Everything else (filtering, errors, staleness checks) is as in `call`.

        Raises:
            TypeError: `kwargs` is not a dict, or as in `call`.

        Example:
            >>> class Printer:
            ...     def on_after_backward(self, fabric):
            ...         print(fabric)
            >>> CallbackDispatcher([Printer()]).call_with("on_after_backward", {"fabric": "f"})
            f
            [None]
        """
        if not isinstance(kwargs, dict):
            raise TypeError(
                f"call_with({hook_name!r}, kwargs={kwargs!r}): kwargs must be a dict of keyword arguments, got "
                f"{type(kwargs).__name__}. Use call({hook_name!r}, *args) for positional arguments."
            )
        try:
            plan = self._by_hook[hook_name]
        except TypeError:
            return self._call_shaped(hook_name, (), kwargs)
        return plan((), kwargs)

    def _position_of(self, callback: object) -> int | None:
        # By identity: two equal but distinct callbacks (e.g. two dataclass instances) are both wanted.
        for position, registered in enumerate(self._callbacks):
            if registered is callback:
                return position
        return None

    def _validate(self, callback: object, where: str) -> None:
        _check_callback_value(callback, where)
        self.registry.check_callback(callback, strict=self._strict_hooks)

    # The plan cache: plans are built on first use and dropped whenever what they depend on changes.

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
        if not is_identifier(hook):  # `hook` is a plain str: _call_shaped converted str subclasses
            raise ValueError(
                f"call(hook_name={hook!r}) is not a valid hook name: hooks are method names, so they must be "
                f"Python identifiers such as 'on_train_batch_end'."
            )
        if hook.startswith("_"):
            raise ValueError(
                f"call(hook_name={hook!r}): names starting with '_' are not hooks; calling it would run every "
                f"callback's private or special method of that name. Name a public method such as "
                f"'on_train_batch_end', or declare your own with register_hook('on_...')."
            )
        if any(type(name) is not str for name in kwnames):
            raise TypeError(
                f"call({hook!r}, ...): keyword names must be plain str, got "
                f"{[name for name in kwnames if type(name) is not str]!r}. Pass str(name) as the key."
            )
        implemented = any(callable(getattr(callback, hook, None)) for callback in self._callbacks)
        self.registry.check_call(hook, implemented=implemented, strict=self._strict_hooks)
        self.registry.record_call(hook)
        key = (hook, nargs, kwnames)
        plan = self._compile(hook, nargs, kwnames, dynamic=False)
        self._plans[key] = plan
        if self._by_hook_key.setdefault(hook, key) == key:
            self._by_hook[hook] = plan
        return plan

    def _compile(self, hook: str, nargs: int, kwnames: tuple[str, ...], *, dynamic: bool) -> Plan:
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

        return self._planner.build(
            self._callbacks, hook, nargs, kwnames, reshape=reshape, stale=stale, dynamic=dynamic
        )


class PlanTable(dict[str, Plan]):
    """`CallbackDispatcher.plans`: compiled plans by hook name. A missing hook reads as a stand-in that
    plans the hook for the shape of its first call (which stores the real plan here) and runs it."""

    def __init__(self, dispatcher: CallbackDispatcher) -> None:
        super().__init__()
        self.dispatcher = dispatcher

    def __missing__(self, hook: str) -> Plan:
        return functools.partial(self.dispatcher._call_shaped, hook)

    def __reduce__(self) -> tuple[Any, ...]:
        # Copied empty (compiled plans do not pickle; the copied dispatcher rebuilds them), and as the copied
        # dispatcher's own table, whichever of the two a copy reaches first: so the wrappers holding it and
        # the dispatcher still share one.
        return _table_of, (self.dispatcher,)


def _table_of(dispatcher: CallbackDispatcher) -> PlanTable:
    # While unpickling, `dispatcher` may not have its state yet: only its __dict__ is touched here, and the
    # table made for it is the one its state brings back.
    table = dispatcher.__dict__.get("_by_hook")
    if not isinstance(table, PlanTable) or table.dispatcher is not dispatcher:
        table = dispatcher.__dict__["_by_hook"] = PlanTable(dispatcher)
    return table


def _checked_rank(rank: object) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(
            f"global_rank={rank!r}: expected an int (the process's global rank, 0 on one process)."
        )
    if rank < 0:
        raise ValueError(f"global_rank={rank}: a rank cannot be negative. Pass 0 for a single process.")
    return rank


def _is_callback_sequence(value: object) -> TypeGuard[collections.abc.Sequence[object]]:
    # A str is a sequence too, of characters: it is rejected as a callback value instead.
    return isinstance(value, collections.abc.Sequence) and not isinstance(value, (str, bytes, bytearray))


def _as_callback_list(callbacks: object) -> list[object]:
    if callbacks is None:
        return []
    if _is_callback_sequence(callbacks):
        return list(callbacks)
    if isinstance(callbacks, collections.abc.Set):  # also dict.keys() and dict.items()
        raise TypeError(
            f"callbacks={callbacks!r} is a {type(callbacks).__name__}, whose order is undefined. "
            f"Pass a list: callbacks run in list order."
        )
    if isinstance(callbacks, (types.GeneratorType, collections.abc.Iterator)):
        raise TypeError(f"callbacks={callbacks!r} is an iterator. Pass a list: callbacks=list(...).")
    if isinstance(callbacks, collections.abc.ValuesView):
        raise TypeError(f"callbacks={callbacks!r} is a dict view. Pass a list: callbacks=list(...).")
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
    if where.startswith("callbacks[") and _is_callback_sequence(value):
        raise TypeError(f"{label} is a {type(value).__name__}: pass a flat list of callbacks.")
