"""CallbackDispatcher.call: order, argument filtering, errors, caching that never goes stale, rank zero."""

from __future__ import annotations

import collections
import collections.abc
import copy
import enum
import functools
import inspect
import pickle
import types
import warnings
from typing import Any, overload

import pytest

from treadle import Fabric
from treadle.callbacks import Callback, CallbackDispatcher, HookRegistry, rank_zero_only
from treadle.callbacks import dispatch as dispatch_module


class Recorder:
    """Appends (name, hook, args, kwargs) to a shared log and returns its name."""

    def __init__(self, name: str, log: list[Any]) -> None:
        self.name = name
        self.log = log

    def on_x(self, *args: Any, **kwargs: Any) -> str:
        self.log.append((self.name, args, kwargs))
        return self.name


# 1. Order, filtering, skipping


def test_visits_callbacks_in_registration_order_and_returns_their_values() -> None:
    log: list[Any] = []
    first, second, third = Recorder("a", log), Recorder("b", log), Recorder("c", log)
    dispatcher = CallbackDispatcher([first, second])
    dispatcher.add(third)
    assert dispatcher.call("on_x", 1, k=2) == ["a", "b", "c"]
    assert [entry[0] for entry in log] == ["a", "b", "c"]
    assert log[0] == ("a", (1,), {"k": 2})


def test_positional_arguments_pass_unchanged_and_keywords_are_filtered_per_method() -> None:
    seen: dict[str, Any] = {}

    class TakesLoss:
        def on_step(self, batch: Any, loss: float) -> None:
            seen["loss"] = (batch, loss)

    class TakesNothing:
        def on_step(self, batch: Any) -> None:
            seen["nothing"] = batch

    class TakesEverything:
        def on_step(self, batch: Any, **kwargs: Any) -> None:
            seen["everything"] = (batch, kwargs)

    class KeywordOnly:
        def on_step(self, batch: Any, *, trainer: str, missing: int = 5) -> None:
            seen["kwonly"] = (batch, trainer, missing)

    class PositionalOnly:
        def on_step(self, batch: Any, loss: float = -1.0, /) -> None:
            seen["posonly"] = (batch, loss)  # `loss` cannot come by keyword, so it keeps its default

    batch = object()
    dispatcher = CallbackDispatcher(
        [TakesLoss(), TakesNothing(), TakesEverything(), KeywordOnly(), PositionalOnly()]
    )
    dispatcher.call("on_step", batch, loss=0.5, trainer="t", fabric="f")
    assert seen["loss"] == (batch, 0.5)
    assert seen["nothing"] is batch
    assert seen["everything"] == (batch, {"loss": 0.5, "trainer": "t", "fabric": "f"})
    assert seen["kwonly"] == (batch, "t", 5)
    assert seen["posonly"] == (batch, -1.0)


def test_callbacks_without_the_hook_or_with_it_set_to_none_are_skipped() -> None:
    class ClassNone:
        on_x = None

    instance_none = Recorder("n", [])
    instance_none.on_x = None  # type: ignore[assignment]
    log: list[Any] = []
    dispatcher = CallbackDispatcher([object(), ClassNone(), instance_none, Recorder("r", log)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skipping these must be silent
        assert dispatcher.call("on_x") == ["r"]
        assert dispatcher.call("on_nobody_implements", 1, a=2) == []


def test_non_callable_hook_attribute_is_skipped_with_one_warning_per_plan() -> None:
    class Broken:
        on_x = 42

    log: list[Any] = []
    dispatcher = CallbackDispatcher([Broken(), Recorder("r", log)])
    with pytest.warns(UserWarning, match=r"`Broken.on_x` is a int, not a method") as record:
        assert dispatcher.call("on_x") == ["r"]
    assert len(record) == 1 and "hook `on_x`" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            assert dispatcher.call("on_x") == ["r"]  # the plan is cached: no new warning


def test_return_values_are_collected_in_order_including_none() -> None:
    class Returns:
        def __init__(self, value: Any) -> None:
            self.value = value

        def on_x(self) -> Any:
            return self.value

    dispatcher = CallbackDispatcher([Returns(1), object(), Returns(None), Returns("z")])
    assert dispatcher.call("on_x") == [1, None, "z"]


# 3. Exceptions


class Boom(Exception):
    pass


def test_exception_propagates_unchanged_with_a_note_and_stops_the_dispatch() -> None:
    error = Boom("bad")
    log: list[Any] = []

    class Raises:
        def on_train_batch_end(self, loss: float) -> None:
            raise error

    class After:
        def on_train_batch_end(self) -> None:
            log.append("after")

    class Before:
        def on_train_batch_end(self) -> None:
            log.append("before")

    dispatcher = CallbackDispatcher([Before(), object(), Raises(), After()])
    with pytest.raises(Boom) as caught:
        dispatcher.call("on_train_batch_end", loss=1.0)
    assert caught.value is error
    assert caught.value.__notes__ == ["raised by callback `Raises` (index 2) in hook `on_train_batch_end`"]
    assert log == ["before"]


def test_type_error_raised_inside_a_callback_is_not_mistaken_for_a_bind_error() -> None:
    class Inner:
        def on_x(self, value: int) -> None:
            raise TypeError("inside the callback")

    dispatcher = CallbackDispatcher([Inner()])
    with pytest.raises(TypeError) as caught:
        dispatcher.call("on_x", value=1)
    assert str(caught.value) == "inside the callback"
    assert caught.value.__notes__ == ["raised by callback `Inner` (index 0) in hook `on_x`"]


def test_note_names_the_right_callback_for_each_position_and_kind() -> None:
    class Ok:
        def on_x(self, a: int) -> int:
            return a

    class Fails:
        def on_x(self, a: int) -> None:
            raise ValueError(a)

    class FailsStatic:
        @staticmethod
        def on_x(a: int) -> None:
            raise ValueError(a)

    class FailsClassmethod:  # takes the getattr-every-call path
        @classmethod
        def on_x(cls, a: int) -> None:
            raise ValueError(a)

    for failing in (Fails(), FailsStatic(), FailsClassmethod()):
        dispatcher = CallbackDispatcher([Ok(), Ok(), failing, Ok()])
        with pytest.raises(ValueError) as caught:
            dispatcher.call("on_x", a=3)
        name = type(failing).__name__
        assert caught.value.__notes__ == [f"raised by callback `{name}` (index 2) in hook `on_x`"]


# 4. Bind errors


def test_method_requiring_an_unsupplied_parameter_is_a_type_error_before_any_callback_runs() -> None:
    log: list[Any] = []

    class Needs:
        def on_train_batch_end(self, loss: float, extra: int) -> None:
            log.append("needs")

    dispatcher = CallbackDispatcher([Recorder("first", log), Needs()])
    with pytest.raises(TypeError) as caught:
        dispatcher.call("on_train_batch_end", loss=1.0, batch_idx=0)
    message = str(caught.value)
    assert "Callback `Needs` (index 1)" in message
    assert "hook `on_train_batch_end`" in message
    assert "requires `extra`" in message
    assert "keyword arguments (loss, batch_idx)" in message
    assert "default value" in message
    assert log == []  # detected while planning, before anything was called
    assert not getattr(caught.value, "__notes__", None)


def test_too_many_positional_arguments_is_a_bind_error() -> None:
    class TakesOne:
        def on_x(self, a: int) -> None:
            pass

    with pytest.raises(TypeError, match=r"Callback `TakesOne` \(index 0\).*too many positional"):
        CallbackDispatcher([TakesOne()]).call("on_x", 1, 2)


def test_bind_error_is_not_cached_once_the_method_is_fixed() -> None:
    class Needs:
        def on_x(self, extra: int) -> int:
            return extra

    dispatcher = CallbackDispatcher([Needs()])
    for _ in range(2):
        with pytest.raises(TypeError, match="requires `extra`"):
            dispatcher.call("on_x")
    Needs.on_x = lambda self, extra=7: extra  # type: ignore[assignment,method-assign]
    assert dispatcher.call("on_x") == [7]


# 5. Hook names


@pytest.mark.parametrize("bad", [None, 3, b"on_x", ["on_x"], ("on_x", 0, ())])
def test_hook_name_that_is_not_a_str_is_a_type_error(bad: Any) -> None:
    dispatcher = CallbackDispatcher([Recorder("r", [])])
    dispatcher.call("on_x", a=1)  # a cached plan must not be found by a look-alike key
    with pytest.raises(TypeError, match="hook name must be a str"):
        dispatcher.call(bad)
    with pytest.raises(TypeError, match="hook name must be a str"):
        dispatcher.call(bad, 1, a=2)


@pytest.mark.parametrize("bad", ["", "on x", "1on", "class", "on_x()"])
def test_hook_name_that_is_not_an_identifier_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="Python identifiers"):
        CallbackDispatcher().call(bad)


def test_str_enum_hook_names_work() -> None:
    class Hook(str, enum.Enum):
        X = "on_x"

    log: list[Any] = []
    dispatcher = CallbackDispatcher([Recorder("r", log)])
    assert dispatcher.call(Hook.X, 1) == ["r"]
    assert dispatcher.call(Hook.X, 1) == ["r"]


def test_names_passed_to_call_become_known_hooks() -> None:
    dispatcher = CallbackDispatcher()
    assert "on_generate_samples" not in dispatcher.registry
    dispatcher.call("on_generate_samples")
    assert "on_generate_samples" in dispatcher.registry


# 6. Caching and staleness


def test_signatures_are_inspected_once_per_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = inspect.signature

    def counting(obj: Any, *args: Any, **kwargs: Any) -> inspect.Signature:
        calls.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counting)
    log: list[Any] = []
    dispatcher = CallbackDispatcher([Recorder("a", log), Recorder("b", log)])
    for step in range(50):
        dispatcher.call("on_x", step, loss=1.0)
    assert len(calls) == 2
    assert len(log) == 100


def test_different_call_shapes_of_one_hook_each_get_the_right_filtering() -> None:
    seen: list[Any] = []

    class Cb:
        def on_x(self, *args: Any, a: int = 0, b: int = 0) -> None:
            seen.append((args, a, b))

    dispatcher = CallbackDispatcher([Cb()])
    for _ in range(2):
        dispatcher.call("on_x", a=1)
        dispatcher.call("on_x", b=2)
        dispatcher.call("on_x", 9, a=1, b=2)
        dispatcher.call("on_x", b=2, a=1)
        dispatcher.call("on_x")
        dispatcher.call("on_x", a=1, c=3)
    assert seen == [((), 1, 0), ((), 0, 2), ((9,), 1, 2), ((), 1, 2), ((), 0, 0), ((), 1, 0)] * 2


def test_keywords_that_are_not_identifiers_reach_only_var_keyword_methods() -> None:
    got: dict[str, Any] = {}

    class Named:
        def on_x(self, a: int) -> None:
            got["named"] = a

    class Catchall:
        def on_x(self, **kwargs: Any) -> None:
            got["all"] = kwargs

    CallbackDispatcher([Named(), Catchall()]).call("on_x", **{"a": 1, "not an identifier": 2, "class": 3})
    assert got == {"named": 1, "all": {"a": 1, "not an identifier": 2, "class": 3}}


def test_adding_and_removing_callbacks_is_seen_by_the_next_call() -> None:
    log: list[Any] = []
    a, b = Recorder("a", log), Recorder("b", log)
    dispatcher = CallbackDispatcher([a])
    assert dispatcher.call("on_x") == ["a"]
    dispatcher.add(b)
    assert dispatcher.call("on_x") == ["a", "b"]
    dispatcher.remove(a)
    assert dispatcher.call("on_x") == ["b"]
    assert dispatcher.callbacks == (b,)


def test_method_added_replaced_and_deleted_on_an_instance() -> None:
    class Plain:
        pass

    class WithMethod:
        def on_x(self) -> str:
            return "class"

    plain, with_method = Plain(), WithMethod()
    dispatcher = CallbackDispatcher([plain, with_method])
    assert dispatcher.call("on_x") == ["class"]
    plain.on_x = lambda: "added"  # type: ignore[attr-defined]
    assert dispatcher.call("on_x") == ["added", "class"]
    plain.on_x = lambda: "replaced"  # type: ignore[attr-defined]
    assert dispatcher.call("on_x") == ["replaced", "class"]
    with_method.on_x = lambda: "override"  # type: ignore[method-assign]
    assert dispatcher.call("on_x") == ["replaced", "override"]
    del plain.on_x  # type: ignore[attr-defined]
    del with_method.on_x
    assert dispatcher.call("on_x") == ["class"]


def test_method_added_replaced_and_deleted_on_the_class_and_on_a_base_class() -> None:
    class Base:
        pass

    class Child(Base):
        pass

    dispatcher = CallbackDispatcher([Child()])
    assert dispatcher.call("on_x") == []
    Base.on_x = lambda self: "base"  # type: ignore[attr-defined]
    assert dispatcher.call("on_x") == ["base"]
    Child.on_x = lambda self: "child"  # type: ignore[attr-defined]
    assert dispatcher.call("on_x") == ["child"]
    Base.on_x = lambda self: "base 2"  # type: ignore[attr-defined]
    assert dispatcher.call("on_x") == ["child"]  # still shadowed by Child's
    del Child.on_x  # type: ignore[attr-defined]
    assert dispatcher.call("on_x") == ["base 2"]
    Base.on_x = None  # type: ignore[attr-defined]
    assert dispatcher.call("on_x") == []
    del Base.on_x  # type: ignore[attr-defined]
    assert dispatcher.call("on_x") == []


def test_a_replaced_method_with_a_new_signature_gets_new_filtering() -> None:
    class Cb:
        def on_x(self, a: int) -> Any:
            return ("old", a)

    cb = Cb()
    dispatcher = CallbackDispatcher([cb])
    assert dispatcher.call("on_x", a=1, b=2) == [("old", 1)]
    Cb.on_x = lambda self, b: ("class", b)  # type: ignore[assignment,method-assign]
    assert dispatcher.call("on_x", a=1, b=2) == [("class", 2)]
    cb.on_x = lambda **kw: ("instance", kw)  # type: ignore[method-assign]
    assert dispatcher.call("on_x", a=1, b=2) == [("instance", {"a": 1, "b": 2})]
    cb.on_x = lambda a, b: ("instance 2", a, b)  # type: ignore[method-assign]
    assert dispatcher.call("on_x", a=1, b=2) == [("instance 2", 1, 2)]


def test_a_change_to_a_callback_without_the_hook_is_seen_when_another_implements_it() -> None:
    log: list[Any] = []

    class Silent:
        pass

    dispatcher = CallbackDispatcher([Recorder("r", log), Silent()])
    assert dispatcher.call("on_x", 1) == ["r"]
    Silent.on_x = lambda self, value: value * 2  # type: ignore[attr-defined]
    assert dispatcher.call("on_x", 1) == ["r", 2]


def test_callbacks_of_one_class_share_their_class_checks_and_each_sees_changes() -> None:
    class Silent:
        pass

    first, second, third = Silent(), Silent(), Silent()
    dispatcher = CallbackDispatcher([first, second, third])
    assert dispatcher.call("on_x") == []
    source = dispatcher._by_hook["on_x"].__doc__ or ""
    assert source.count("not in") == 4  # the class once, and each instance dict
    second.on_x = lambda: "instance"  # type: ignore[attr-defined]
    assert dispatcher.call("on_x") == ["instance"]
    Silent.on_x = lambda self: "class"  # type: ignore[attr-defined]
    assert dispatcher.call("on_x") == ["class", "instance", "class"]


def test_call_with_takes_a_dict_it_neither_copies_into_methods_nor_changes() -> None:
    log: list[Any] = []

    class Picky:
        def on_x(self, loss: float) -> float:
            return loss * 2

    class Everything:
        def on_x(self, **kwargs: Any) -> dict[str, Any]:
            kwargs["added"] = True  # a method changing its own **kwargs must not change the caller's dict
            return kwargs

    dispatcher = CallbackDispatcher([Picky(), Everything(), Recorder("r", log)])
    kwargs = {"loss": 1.5, "fabric": "f"}
    for _ in range(2):  # the first call plans, the second runs the plan
        assert dispatcher.call_with("on_x", kwargs) == [3.0, {"loss": 1.5, "fabric": "f", "added": True}, "r"]
    assert kwargs == {"loss": 1.5, "fabric": "f"}
    assert dispatcher.call_with("on_x", {"loss": 1.0}) == [2.0, {"loss": 1.0, "added": True}, "r"]
    with pytest.raises(TypeError, match="loss"):
        dispatcher.call_with("on_x", {"fabric": "f"})
    with pytest.raises(TypeError, match="must be a str"):
        dispatcher.call_with(3, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"kwargs=\[1\]\): kwargs must be a dict.*Use call\('on_x', \*args\)"):
        dispatcher.call_with("on_x", [1])  # type: ignore[arg-type]


def test_changes_made_by_a_callback_during_a_call_apply_from_the_next_call() -> None:
    class SelfReplacing:
        def on_x(self) -> str:
            self.on_x = lambda: "second"  # type: ignore[method-assign]
            return "first"

    dispatcher = CallbackDispatcher([SelfReplacing()])
    assert dispatcher.call("on_x") == ["first"]
    assert dispatcher.call("on_x") == ["second"]


def test_repeated_stale_plans_fall_back_to_plain_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch_module, "_MAX_REBUILDS", 0)

    class Cb:
        def on_x(self, a: int) -> Any:
            return a

    dispatcher = CallbackDispatcher([Cb()])
    assert dispatcher.call("on_x", a=1, b=2) == [1]
    Cb.on_x = lambda self, b: b  # type: ignore[assignment,method-assign]
    assert dispatcher.call("on_x", a=1, b=2) == [2]  # rebuilt through the getattr-every-call plan
    assert dispatcher.call("on_x", a=1, b=2) == [2]


# Kinds of callables and callbacks


# Python 3.13 warns that a partial on a class will bind like a method in the future; that is about the
# user's class, and a plain loop would trigger it too.
@pytest.mark.filterwarnings("ignore:functools.partial will be a method descriptor:FutureWarning")
def test_staticmethod_classmethod_partial_callable_object_and_bound_method_hooks() -> None:
    class CallableObject:
        def __call__(self, a: int) -> Any:
            return ("object", a)

    def free(tag: str, a: int) -> Any:
        return (tag, a)

    class Other:
        def method(self, a: int) -> Any:
            return ("bound", a)

    class Static:
        @staticmethod
        def on_x(a: int) -> Any:
            return ("static", a)

    class Klass:
        @classmethod
        def on_x(cls, a: int) -> Any:
            return ("classmethod", cls.__name__, a)

    class WithObject:
        on_x = CallableObject()

    class WithPartial:
        on_x = functools.partial(free, "class partial")

    on_instance = types.SimpleNamespace(on_x=functools.partial(free, "instance partial"))
    bound = types.SimpleNamespace(on_x=Other().method)
    callbacks = [Static(), Klass(), WithObject(), WithPartial(), on_instance, bound]
    dispatcher = CallbackDispatcher(callbacks)
    expected = [
        ("static", 1),
        ("classmethod", "Klass", 1),
        ("object", 1),
        ("class partial", 1),
        ("instance partial", 1),
        ("bound", 1),
    ]
    for _ in range(2):
        assert dispatcher.call("on_x", a=1, unused=0) == expected


def test_ordinary_callbacks_get_a_compiled_plan_and_only_dynamic_ones_use_getattr() -> None:
    class Plain:
        def on_x(self, a: int) -> int:
            return a

    class WithProperty:
        @property
        def on_x(self) -> Any:
            return lambda a: a

    dispatcher = CallbackDispatcher([Plain(), Plain(), WithProperty()])
    assert dispatcher.call("on_x", a=1) == [1, 1, 1]
    source = dispatcher._by_hook["on_x"].__doc__ or ""
    assert source.count("(cb") == 2  # Plain.on_x is called directly with its instance
    assert source.count("*e") == 1  # the property is looked up on every call


def test_builtin_without_signature_receives_every_keyword() -> None:
    store: dict[str, Any] = {}
    callback = types.SimpleNamespace(on_x=store.update)
    with pytest.raises(ValueError):
        inspect.signature(store.update)  # the premise: no signature to filter by
    CallbackDispatcher([callback]).call("on_x", a=1, b=2)
    assert store == {"a": 1, "b": 2}


def test_slots_callbacks_work_and_see_class_changes() -> None:
    class Slotted:
        __slots__ = ("count",)

        def __init__(self) -> None:
            self.count = 0

        def on_x(self) -> int:
            self.count += 1
            return self.count

    slotted = Slotted()
    dispatcher = CallbackDispatcher([slotted])
    assert dispatcher.call("on_x") == [1]
    assert dispatcher.call("on_x") == [2]
    Slotted.on_x = lambda self: "replaced"  # type: ignore[assignment,method-assign]
    assert dispatcher.call("on_x") == ["replaced"]


def test_a_slot_named_like_the_hook_is_looked_up_every_call() -> None:
    class SlotHook:
        __slots__ = ("on_x",)

    callback = SlotHook()
    dispatcher = CallbackDispatcher([callback])
    assert dispatcher.call("on_x") == []  # the slot is empty
    callback.on_x = lambda: "set"  # type: ignore[assignment,misc]
    assert dispatcher.call("on_x") == ["set"]


def test_property_and_custom_getattribute_and_getattr_callbacks_are_looked_up_every_call() -> None:
    class WithProperty:
        def __init__(self) -> None:
            self.tag = "p1"

        @property
        def on_x(self) -> Any:
            tag = self.tag
            return lambda a: (tag, a)

    class Proxy:
        def __init__(self, target: object) -> None:
            self._target = target

        def __getattr__(self, name: str) -> Any:
            return getattr(self._target, name)

    class Shouting:
        def __getattribute__(self, name: str) -> Any:
            if name == "on_x":
                return lambda a: ("shout", a)
            return object.__getattribute__(self, name)

    with_property = WithProperty()
    target = types.SimpleNamespace(on_x=lambda a: ("target", a))
    dispatcher = CallbackDispatcher([with_property, Proxy(target), Shouting()])
    assert dispatcher.call("on_x", a=1) == [("p1", 1), ("target", 1), ("shout", 1)]
    with_property.tag = "p2"
    target.on_x = lambda a, b=0: ("target 2", a, b)
    assert dispatcher.call("on_x", a=1) == [("p2", 1), ("target 2", 1, 0), ("shout", 1)]


def test_python_module_as_a_callback() -> None:
    module = types.ModuleType("my_callbacks")
    exec("def on_x(a):\n    return ('module', a)\n", module.__dict__)
    dispatcher = CallbackDispatcher([module])
    assert dispatcher.call("on_x", a=1, b=2) == [("module", 1)]
    module.on_x = lambda a: ("module 2", a)  # type: ignore[attr-defined]
    assert dispatcher.call("on_x", a=1, b=2) == [("module 2", 1)]


def test_nn_module_callbacks() -> None:
    torch = pytest.importorskip("torch")

    class ModuleCallback(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)
            self.calls = 0

        def on_x(self, loss: float) -> float:
            self.calls += 1
            return loss

    module = ModuleCallback()
    dispatcher = CallbackDispatcher([module])
    assert dispatcher.call("on_x", loss=0.5, trainer=None) == [0.5]
    assert dispatcher.call("on_missing") == []  # __getattr__ raising AttributeError means absent
    module.on_x = lambda loss: loss * 2  # stored in the instance dict by nn.Module.__setattr__
    assert dispatcher.call("on_x", loss=0.5, trainer=None) == [1.0]
    assert module.calls == 1


# 8. Rank zero


class EveryRank:
    def on_x(self) -> str:
        return "every"


class ZeroOnlyClass:
    rank_zero_only = True

    def on_x(self) -> str:
        return "class"


class ZeroOnlyMethod:
    @rank_zero_only
    def on_x(self) -> str:
        return "method"

    def on_y(self) -> str:
        return "unmarked"


def test_rank_zero_only_class_and_method_by_global_rank() -> None:
    callbacks = [EveryRank(), ZeroOnlyClass(), ZeroOnlyMethod()]
    assert CallbackDispatcher(callbacks, global_rank=0).call("on_x") == ["every", "class", "method"]
    on_one = CallbackDispatcher(callbacks, global_rank=1)
    assert on_one.call("on_x") == ["every"]
    assert on_one.call("on_y") == ["unmarked"]


def test_set_global_rank_replans() -> None:
    dispatcher = CallbackDispatcher([EveryRank(), ZeroOnlyClass(), ZeroOnlyMethod()])
    assert dispatcher.call("on_x") == ["every", "class", "method"]
    dispatcher.set_global_rank(3)
    assert dispatcher.call("on_x") == ["every"]
    dispatcher.set_global_rank(0)
    assert dispatcher.call("on_x") == ["every", "class", "method"]


def test_rank_zero_only_on_static_and_class_methods_and_instance_functions() -> None:
    class Static:
        @rank_zero_only
        @staticmethod
        def on_x() -> str:
            return "static"

    class StaticOtherOrder:
        @staticmethod
        @rank_zero_only
        def on_x() -> str:
            return "static 2"

    class Klass:
        @rank_zero_only
        @classmethod
        def on_x(cls) -> str:
            return "classmethod"

    instance = types.SimpleNamespace(on_x=rank_zero_only(lambda: "instance"))
    callbacks = [Static(), StaticOtherOrder(), Klass(), instance, EveryRank()]
    assert CallbackDispatcher(callbacks).call("on_x") == [
        "static",
        "static 2",
        "classmethod",
        "instance",
        "every",
    ]
    assert CallbackDispatcher(callbacks, global_rank=2).call("on_x") == ["every"]


def test_a_marked_method_replaced_by_an_unmarked_one_runs_on_other_ranks() -> None:
    class Cb:
        @rank_zero_only
        def on_x(self) -> str:
            return "marked"

    dispatcher = CallbackDispatcher([Cb()], global_rank=1)
    assert dispatcher.call("on_x") == []
    Cb.on_x = lambda self: "unmarked"  # type: ignore[assignment,method-assign]
    assert dispatcher.call("on_x") == ["unmarked"]


@pytest.mark.parametrize("bad", [-1, 1.0, "0", True, None])
def test_bad_global_rank(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="global_rank"):
        CallbackDispatcher(global_rank=bad)
    with pytest.raises((TypeError, ValueError), match="global_rank"):
        CallbackDispatcher().set_global_rank(bad)


# 9. Callback base


def test_callback_base_no_ops_are_never_called_and_overrides_are() -> None:
    class OnlyEnd(Callback):
        def on_train_end(self, trainer: Any) -> str:
            return f"end {trainer}"

    dispatcher = CallbackDispatcher([OnlyEnd(), Callback()])
    assert dispatcher.call("on_train_end", trainer="t", fabric="f") == ["end t"]
    # Not overridden: nothing is called, so nothing is returned (a called no-op would return None).
    assert dispatcher.call("on_train_start", trainer="t", fabric="f") == []
    assert dispatcher.call("on_before_backward", 1.0) == []
    # A no-op added later on the class is noticed.
    OnlyEnd.on_train_start = lambda self: "start"  # type: ignore[method-assign]
    assert dispatcher.call("on_train_start", trainer="t", fabric="f") == ["start"]


# wrap_methods


def test_wrap_methods_routes_calls_through_the_wrapper_with_the_same_filtering() -> None:
    seen: list[Any] = []
    built: list[Any] = []

    class A:
        def on_x(self, a: int) -> int:
            return a

    class B:
        @staticmethod
        def on_x(b: int = 0) -> int:
            return b

    def wrapper(callback: object, hook: str, method: Any) -> Any:
        built.append((type(callback).__name__, hook))

        def timed(*args: Any, **kwargs: Any) -> Any:
            seen.append((type(callback).__name__, args, kwargs))
            return method(*args, **kwargs)

        return timed

    dispatcher = CallbackDispatcher([A(), B(), object()])
    assert dispatcher.call("on_x", a=1, b=2) == [1, 2]
    dispatcher.wrap_methods(wrapper)
    assert dispatcher.call("on_x", a=1, b=2) == [1, 2]
    assert dispatcher.call("on_x", a=1, b=2) == [1, 2]
    assert seen == [("A", (), {"a": 1}), ("B", (), {"b": 2})] * 2
    assert built == [("A", "on_x"), ("B", "on_x")]  # once per plan, not per call
    dispatcher.wrap_methods(None)
    assert dispatcher.call("on_x", a=1, b=2) == [1, 2]
    assert len(seen) == 4


def test_wrapped_methods_keep_exception_notes() -> None:
    class Fails:
        def on_x(self) -> None:
            raise Boom()

    dispatcher = CallbackDispatcher([EveryRank(), Fails()])
    dispatcher.wrap_methods(lambda callback, hook, method: method)
    with pytest.raises(Boom) as caught:
        dispatcher.call("on_x")
    assert caught.value.__notes__ == ["raised by callback `Fails` (index 1) in hook `on_x`"]


def test_wrap_methods_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="wrap_methods"):
        CallbackDispatcher().wrap_methods(42)  # type: ignore[arg-type]


# Constructor and registration


def test_the_users_list_is_copied_not_aliased_or_mutated() -> None:
    log: list[Any] = []
    mine = [Recorder("a", log)]
    dispatcher = CallbackDispatcher(mine)
    mine.append(Recorder("b", log))
    assert dispatcher.call("on_x") == ["a"]
    dispatcher.add(Recorder("c", log))
    assert len(mine) == 2
    assert isinstance(dispatcher.callbacks, tuple)


def test_accepts_none_one_object_a_list_or_a_tuple() -> None:
    one = EveryRank()
    assert CallbackDispatcher().callbacks == ()
    assert CallbackDispatcher(None).callbacks == ()
    assert CallbackDispatcher(one).callbacks == (one,)
    other = EveryRank()
    assert CallbackDispatcher((one, other)).callbacks == (one, other)


def test_one_callback_object_listed_twice_is_an_error() -> None:
    one = EveryRank()
    with pytest.raises(
        ValueError, match=r"callbacks\[2\] is the same EveryRank object as callbacks\[0\].*List each"
    ):
        CallbackDispatcher([one, EveryRank(), one])
    dispatcher = CallbackDispatcher([one])
    with pytest.raises(ValueError, match=r"this EveryRank object is already registered \(callbacks\[0\]\)"):
        dispatcher.add(one)
    assert dispatcher.callbacks == (one,)
    dispatcher.remove(one)
    dispatcher.add(one)  # removed first: fine
    assert dispatcher.callbacks == (one,)


class Shelf(collections.abc.Sequence[object]):
    """A Sequence that is neither a list nor a tuple."""

    def __init__(self, *items: object) -> None:
        self._items = items

    @overload
    def __getitem__(self, index: int) -> object: ...
    @overload
    def __getitem__(self, index: slice) -> collections.abc.Sequence[object]: ...
    def __getitem__(self, index: int | slice) -> object:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)


@pytest.mark.parametrize("container", [collections.deque, lambda *items: Shelf(*items)])
def test_any_sequence_of_callbacks_is_unpacked_in_order(container: Any) -> None:
    log: list[Any] = []
    first, second = Recorder("a", log), Recorder("b", log)
    callbacks = container([first, second]) if container is collections.deque else container(first, second)
    dispatcher = CallbackDispatcher(callbacks)
    assert dispatcher.callbacks == (first, second)
    assert dispatcher.call("on_x") == ["a", "b"]


def test_a_bad_item_in_another_sequence_is_named_by_position() -> None:
    with pytest.raises(TypeError, match=r"callbacks\[1\]=None is not a callback"):
        CallbackDispatcher(collections.deque([EveryRank(), None]))
    with pytest.raises(TypeError, match=r"callbacks\[0\] is a deque: pass a flat list"):
        CallbackDispatcher([collections.deque([EveryRank()])])


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("EarlyStopping", r"callbacks='EarlyStopping' is a str, not a callback object"),
        (b"x", "is a bytes"),
        ({"a": EveryRank()}, "is a mapping"),
        (EveryRank, r"callbacks=EveryRank is a class, not a callback instance. Instantiate it"),
        ([EveryRank], r"callbacks\[0\]=EveryRank is a class"),
        ([EveryRank(), None], r"callbacks\[1\]=None is not a callback"),
        ([[EveryRank()]], r"callbacks\[0\] is a list"),
        ({EveryRank()}, "order is undefined"),
        (frozenset({EveryRank()}), "order is undefined"),
        ({"a": EveryRank()}.keys(), "order is undefined"),
        ({"a": EveryRank()}.values(), r"is a dict view. Pass a list: callbacks=list\(...\)"),
        ((cb for cb in [EveryRank()]), "is an iterator"),
        (iter([EveryRank()]), "is an iterator"),
        (bytearray(b"x"), "is a bytearray, not a callback object"),
    ],
)
def test_bad_callbacks_values_are_type_errors(bad: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        CallbackDispatcher(bad)


def test_add_rejects_lists_and_non_callbacks() -> None:
    dispatcher = CallbackDispatcher()
    with pytest.raises(TypeError, match=r"add\(callback\) takes one callback"):
        dispatcher.add([EveryRank()])
    with pytest.raises(TypeError, match=r"add\(callback\) takes one callback, got a deque of 1"):
        dispatcher.add(collections.deque([EveryRank()]))
    with pytest.raises(TypeError, match="callback=None"):
        dispatcher.add(None)
    with pytest.raises(TypeError, match="is a class"):
        dispatcher.add(EveryRank)


def test_remove_is_by_identity_and_reports_an_absent_callback() -> None:
    class Equal:
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = object.__hash__

    first, second = Equal(), Equal()
    dispatcher = CallbackDispatcher([first])
    with pytest.raises(ValueError, match=r"not a registered callback \(registered: Equal\)"):
        dispatcher.remove(second)
    dispatcher.remove(first)
    assert dispatcher.callbacks == ()


# Pickling and copying (strategy="ddp_spawn" pickles the Fabric and so its dispatcher)


class Scaled:
    """A picklable callback: module level, plain attributes."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def on_x(self, value: int, scale: int = 1) -> int:
        return value * self.factor * scale

    def on_my_event(self) -> str:
        return f"event {self.factor}"


class ScaledOnRankZero(Scaled):
    rank_zero_only = True


def tag_wrapper(callback: object, hook: str, method: Any) -> Any:
    """A picklable method wrapper: tags every return value."""
    return functools.partial(_tagged, method)


def _tagged(method: Any, *args: Any, **kwargs: Any) -> Any:
    return ("tagged", method(*args, **kwargs))


def used_dispatcher(**kwargs: Any) -> CallbackDispatcher:
    """A dispatcher whose plans are built: several hooks, shapes and a bind error were planned."""
    registry = HookRegistry()
    for name in ("on_x", "on_my_event", "on_unused"):
        registry.register(name)
    dispatcher = CallbackDispatcher(
        [Scaled(2), ScaledOnRankZero(5), Scaled(3)], strict_hooks=True, registry=registry, **kwargs
    )
    expected = [2, 3] if kwargs.get("global_rank") else [2, 5, 3]
    assert dispatcher.call("on_x", 1, trainer=None) == expected
    dispatcher.call("on_x", 1, scale=2)
    dispatcher.call("on_my_event")
    dispatcher.call("on_unused")
    with pytest.raises(TypeError, match="requires `value`"):
        dispatcher.call("on_x")
    return dispatcher


def test_a_used_dispatcher_pickles_and_the_copy_dispatches_the_same() -> None:
    dispatcher = used_dispatcher(global_rank=1)
    clone = pickle.loads(pickle.dumps(dispatcher))
    assert [type(cb) for cb in clone.callbacks] == [Scaled, ScaledOnRankZero, Scaled]
    assert clone.call("on_x", 1, scale=2) == [4, 6]  # still rank 1: the rank-zero-only callback is skipped
    assert clone.call("on_x", value=1) == [2, 3]
    assert clone.call("on_my_event") == ["event 2", "event 3"]
    assert "on_my_event" in clone.registry and "on_unused" in clone.registry
    clone.set_global_rank(0)
    assert clone.call("on_x", 1) == [2, 5, 3]
    with pytest.raises(ValueError, match="on_my_evnt"):  # strict_hooks is kept
        clone.add(type("Late", (), {"on_my_evnt": lambda self: None})())


def test_a_pickled_dispatcher_keeps_its_wrapper() -> None:
    dispatcher = CallbackDispatcher([Scaled(2)])
    dispatcher.wrap_methods(tag_wrapper)
    assert dispatcher.call("on_x", 1) == [("tagged", 2)]
    assert pickle.loads(pickle.dumps(dispatcher)).call("on_x", 1) == [("tagged", 2)]


def test_a_deep_copy_calls_its_own_callbacks_not_the_originals() -> None:
    dispatcher = used_dispatcher()
    clone = copy.deepcopy(dispatcher)
    assert all(mine is not theirs for mine, theirs in zip(clone.callbacks, dispatcher.callbacks, strict=True))
    clone.callbacks[0].factor = 10
    assert clone.call("on_x", 1, scale=2) == [20, 10, 6]
    assert dispatcher.call("on_x", 1, scale=2) == [4, 10, 6]
    clone.remove(clone.callbacks[1])
    assert clone.call("on_x", 1, scale=2) == [20, 6]
    assert len(dispatcher.callbacks) == 3


def test_a_shallow_copy_shares_the_callbacks_but_not_the_list() -> None:
    dispatcher = used_dispatcher()
    clone = copy.copy(dispatcher)
    assert clone.callbacks == dispatcher.callbacks
    clone.add(Scaled(7))
    assert clone.call("on_x", 1) == [2, 5, 3, 7]
    assert dispatcher.call("on_x", 1) == [2, 5, 3]


def test_plans_table_runs_plans_without_call_and_plans_missing_hooks() -> None:
    log: list[Any] = []
    dispatcher = CallbackDispatcher([Recorder("r", log)])
    plans = dispatcher.plans
    assert "on_x" not in plans
    assert plans["on_x"]((), {"loss": 1}) == ["r"]  # a stand-in plans the hook on its first call
    assert "on_x" in plans
    assert plans["on_x"]((), {"loss": 2}) == ["r"]
    dispatcher.add(Recorder("s", log))  # invalidated in place: the same table, replanned on next use
    assert dispatcher.plans is plans and "on_x" not in plans
    assert plans["on_x"]((), {"loss": 3}) == ["r", "s"]
    assert [kwargs for _, _, kwargs in log] == [{"loss": 1}, {"loss": 2}, {"loss": 3}, {"loss": 3}]


class HoldsTable:
    """Like a set-up optimizer: keeps a reference to its dispatcher's plan table."""

    def __init__(self, dispatcher: CallbackDispatcher) -> None:
        self.dispatcher = dispatcher
        self.plans = dispatcher.plans


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))])
def test_copies_of_a_table_holder_share_the_copied_dispatchers_table(clone: Any) -> None:
    dispatcher = used_dispatcher()
    holder = HoldsTable(dispatcher)
    dispatcher.add(holder)  # a cycle: the dispatcher reaches the holder, which holds its table
    copied = clone(holder)
    assert copied.plans is copied.dispatcher.plans is not dispatcher.plans
    assert copied.plans["on_x"]((1,), {}) == [2, 5, 3]
    assert "on_x" in copied.dispatcher.plans and "on_x" not in dispatcher.plans


def test_a_shallow_copy_gets_its_own_plan_table_rank_and_wrapper() -> None:
    dispatcher = used_dispatcher()
    clone = copy.copy(dispatcher)
    assert clone.plans is not dispatcher.plans and clone.plans.dispatcher is clone
    clone.set_global_rank(1)
    clone.wrap_methods(tag_wrapper)
    assert dispatcher.call("on_x", 1) == [2, 5, 3]
    assert clone.call("on_x", 1) == [("tagged", 2), ("tagged", 3)]


class _BatchEnd:
    def on_train_batch_end(self, loss: float) -> None: ...


def test_calling_a_misspelled_hook_that_nothing_implements_warns_once_with_a_suggestion() -> None:
    fabric = Fabric(accelerator="cpu", callbacks=[_BatchEnd()])
    with pytest.warns(UserWarning, match=r"call\('on_train_batch_ned'\).*did you mean 'on_train_batch_end'"):
        assert fabric.call("on_train_batch_ned", loss=1.0) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fabric.call("on_train_batch_ned", loss=1.0)  # once per name
        fabric.call("on_generate_samples")  # an event of the user's own, like no known hook: silent
        fabric.call("on_train_batch_end", loss=1.0)


def test_strict_hooks_make_an_unknown_unimplemented_call_an_error() -> None:
    fabric = Fabric(accelerator="cpu", callbacks=[_BatchEnd()], strict_hooks=True)
    with pytest.raises(ValueError, match=r"call\('on_validaton_end'\).*did you mean 'on_validation_end'"):
        fabric.call("on_validaton_end")
    with pytest.raises(ValueError, match=r"register_hook\('on_generate_samples'\)"):
        fabric.call("on_generate_samples")
    fabric.register_hook("on_generate_samples")
    assert fabric.call("on_generate_samples") == []
    assert fabric.call("on_train_batch_end", loss=1.0) == [None]


@pytest.mark.parametrize("name", ["__init__", "__repr__", "_private"])
def test_private_and_special_names_are_not_hooks(name: str) -> None:
    created: list[int] = []

    class Counts:
        def __init__(self) -> None:
            created.append(1)

        def _private(self) -> None:
            created.append(2)

    fabric = Fabric(accelerator="cpu", callbacks=[Counts()])
    with pytest.raises(ValueError, match=rf"call\(hook_name='{name}'\): names starting with '_' are not hooks"):
        fabric.call(name)
    assert created == [1]
