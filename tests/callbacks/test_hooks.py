"""Hook names, typo detection, the Callback base and the rank_zero_only decorator."""

from __future__ import annotations

import inspect
import pickle
import warnings
from typing import Any

import pytest

from treadle.callbacks import (
    FABRIC_HOOKS,
    KNOWN_HOOKS,
    TRAINER_HOOKS,
    Callback,
    CallbackDispatcher,
    HookRegistry,
    rank_zero_only,
)

# Hook lists


def test_known_hooks_is_the_union_of_fabric_and_trainer_hooks() -> None:
    assert isinstance(FABRIC_HOOKS, tuple) and isinstance(TRAINER_HOOKS, tuple)
    assert isinstance(KNOWN_HOOKS, frozenset)
    assert set(FABRIC_HOOKS) == {
        "on_after_setup",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_after_optimizer_step",
    }
    assert len(TRAINER_HOOKS) == len(set(TRAINER_HOOKS)) == 21
    assert {"on_train_batch_end", "on_validation_batch_end", "on_exception"} <= set(TRAINER_HOOKS)
    assert set(FABRIC_HOOKS) | set(TRAINER_HOOKS) == KNOWN_HOOKS
    assert all(name.startswith("on_") and name.isidentifier() for name in KNOWN_HOOKS)


# Callback base


def test_callback_lists_every_known_hook_as_a_documented_no_op() -> None:
    own = {name for name in vars(Callback) if name.startswith("on_")}
    assert own == KNOWN_HOOKS  # nothing more, so the base itself never looks like a typo
    callback = Callback()
    for name in KNOWN_HOOKS:
        method = getattr(Callback, name)
        assert inspect.getdoc(method), name
        assert getattr(callback, name)(1, 2, trainer=None) is None


def test_callback_defaults() -> None:
    class MyCallback(Callback):
        pass

    assert Callback.rank_zero_only is False
    assert MyCallback().state_key == "test_callback_defaults.<locals>.MyCallback"


def test_callback_subclass_with_a_narrower_signature_is_not_flagged() -> None:
    class Narrow(Callback):
        def on_train_batch_end(self, loss: float) -> None:
            pass

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HookRegistry().check_callback(Narrow(), strict=True)


# HookRegistry.register


def test_register_makes_a_name_known() -> None:
    registry = HookRegistry()
    assert "on_plot" not in registry
    registry.register("on_plot")
    assert "on_plot" in registry
    assert "on_train_end" in registry
    assert 3 not in registry


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (42, TypeError, "must be a str, got int"),
        (None, TypeError, "must be a str"),
        ("plot", ValueError, "starting with 'on_'"),
        ("on plot", ValueError, "Python identifier"),
        ("on_", ValueError, None),
        ("", ValueError, None),
    ],
)
def test_register_validates_the_name(bad: Any, error: type[Exception], match: str | None) -> None:
    if bad == "on_":  # a valid identifier with the prefix: accepted
        HookRegistry().register(bad)
        return
    with pytest.raises(error, match=match):
        HookRegistry().register(bad)


# HookRegistry.check_callback


class Typo:
    def on_train_batch_ned(self) -> None:
        pass


def test_a_close_misspelling_warns_once_per_class_and_method() -> None:
    registry = HookRegistry()
    with pytest.warns(UserWarning) as record:
        registry.check_callback(Typo(), strict=False)
        registry.check_callback(Typo(), strict=False)
    assert len(record) == 1
    assert str(record[0].message) == (
        "`Typo.on_train_batch_ned` looks like a misspelling of `on_train_batch_end`; it will never be "
        "called. Rename it, or if it is your own hook, declare it with Fabric(hooks=['on_train_batch_ned']) "
        "or fabric.register_hook('on_train_batch_ned') before add_callback."
    )
    assert record[0].filename == __file__  # points at the caller, not into treadle


def test_each_misspelled_method_gets_its_own_warning() -> None:
    class TwoTypos:
        def on_validaton_end(self) -> None:
            pass

        def on_epoch_end(self) -> None:
            pass

        def on_train_end(self) -> None:  # correct: no warning
            pass

    with pytest.warns(UserWarning) as record:
        HookRegistry().check_callback(TwoTypos(), strict=False)
    messages = sorted(str(warning.message) for warning in record)
    assert len(messages) == 2
    assert messages[0].startswith("`TwoTypos.on_epoch_end` looks like a misspelling of `on_train_epoch_end`")
    assert messages[1].startswith(
        "`TwoTypos.on_validaton_end` looks like a misspelling of `on_validation_end`"
    )


def test_methods_on_the_instance_are_checked_too() -> None:
    class Plain:
        pass

    callback = Plain()
    callback.on_fit_ned = lambda: None  # type: ignore[attr-defined]
    with pytest.warns(UserWarning, match="`Plain.on_fit_ned` looks like a misspelling of `on_fit_end`"):
        HookRegistry().check_callback(callback, strict=False)


@pytest.mark.parametrize("name", ["on_my_event", "on_test_start", "on_log", "on_generate_samples"])
def test_names_far_from_every_hook_are_accepted_silently(name: str) -> None:
    callback_class = type("Custom", (), {name: lambda self: None})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HookRegistry().check_callback(callback_class(), strict=False)


# Hooks of other loops: a whole word swapped for one of another meaning names another hook on purpose.
OTHER_LOOP_HOOKS = [
    "on_test_batch_end",
    "on_test_batch_start",
    "on_test_epoch_start",
    "on_test_epoch_end",
    "on_test_start",
    "on_test_end",
    "on_predict_batch_end",
    "on_predict_epoch_start",
    "on_predict_epoch_end",
    "on_predict_end",
    "on_sanity_check_start",
    "on_sanity_check_end",
    "on_eval_epoch_end",
    "on_test_step_end",
    "on_after_zero_grad",
    "on_before_forward",
]


@pytest.mark.parametrize("name", OTHER_LOOP_HOOKS)
def test_hooks_that_swap_a_whole_phase_or_moment_word_are_accepted_silently(name: str) -> None:
    callback_class = type("OtherLoop", (), {name: lambda self: None})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HookRegistry().check_callback(callback_class(), strict=False)


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("on_train_batch_ned", "on_train_batch_end"),  # one word misspelled
        ("on_trian_batch_end", "on_train_batch_end"),
        ("on_vaildation_end", "on_validation_end"),
        ("on_train_epoch_edn", "on_train_epoch_end"),
        ("on_epoch_end", "on_train_epoch_end"),  # an old name, one word short
        ("on_batch_end", "on_train_batch_end"),
        ("on_val_batch_end", "on_validation_batch_end"),  # a synonym, not another phase
        ("on_training_epoch_end", "on_train_epoch_end"),
        # A swapped phase and a misspelled word: the suggestion keeps the phase the user chose.
        ("on_test_batch_ned", "on_test_batch_end"),
        ("on_predict_epoch_ned", "on_predict_epoch_end"),
        ("on_test_bacth_end", "on_test_batch_end"),
    ],
)
def test_misspelled_words_are_still_reported(name: str, meant: str) -> None:
    callback_class = type("Misspelled", (), {name: lambda self: None})
    with pytest.warns(UserWarning, match=f"`Misspelled.{name}` looks like a misspelling of `{meant}`"):
        HookRegistry().check_callback(callback_class(), strict=False)


def test_other_loop_hooks_are_still_unknown_under_strict_hooks() -> None:
    class TestLoop:
        def on_test_batch_end(self) -> None:
            pass

    with pytest.raises(ValueError, match=r"`on_test_batch_end`\. strict_hooks=True"):
        HookRegistry().check_callback(TestLoop(), strict=True)


def test_non_methods_and_private_names_are_not_checked() -> None:
    evaluated = []

    class Attributes:
        on_train_batch_ned = 3  # not a method
        _on_train_batch_ned = None

        def _private(self) -> None:
            pass

        @property
        def on_fit_ned(self) -> Any:
            evaluated.append(True)
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HookRegistry().check_callback(Attributes(), strict=True)
    assert evaluated == []  # properties are looked at, not evaluated


def test_static_and_class_methods_are_checked() -> None:
    class Kinds:
        @staticmethod
        def on_fit_ned() -> None:
            pass

        @classmethod
        def on_train_ned(cls) -> None:
            pass

    with pytest.warns(UserWarning) as record:
        HookRegistry().check_callback(Kinds(), strict=False)
    assert len(record) == 2


def test_strict_raises_for_every_unknown_method_with_close_matches_and_the_fix() -> None:
    class Unknown:
        def on_train_batch_ned(self) -> None:
            pass

        def on_my_event(self) -> None:
            pass

    with pytest.raises(ValueError) as caught:
        HookRegistry().check_callback(Unknown(), strict=True)
    message = str(caught.value)
    assert "Callback `Unknown`" in message
    assert "`on_train_batch_ned` (did you mean `on_train_batch_end`, `on_train_batch_start`?)" in message
    assert "`on_my_event`" in message
    # Callbacks given to the Fabric constructor are checked before any register_hook() call can run.
    assert message.endswith(
        "Rename each misspelled method, or declare your own hook with Fabric(hooks=['on_my_event']) or "
        "fabric.register_hook('on_my_event') before add_callback."
    )


def test_registered_and_called_names_count_as_known() -> None:
    class Custom:
        def on_plot(self) -> None:
            pass

        def on_generate_sample(self) -> None:
            pass

    registry = HookRegistry()
    registry.register("on_plot")
    registry.record_call("on_generate_sample")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.check_callback(Custom(), strict=True)


def test_a_typo_of_a_registered_hook_is_caught() -> None:
    class Typo2:
        def on_generate_smaples(self) -> None:
            pass

    registry = HookRegistry()
    registry.register("on_generate_samples")
    with pytest.warns(UserWarning, match="misspelling of `on_generate_samples`"):
        registry.check_callback(Typo2(), strict=False)


# Through the dispatcher


def test_dispatcher_checks_callbacks_in_the_constructor_and_in_add() -> None:
    with pytest.warns(UserWarning, match="on_train_batch_ned"):
        dispatcher = CallbackDispatcher([Typo()])

    class Typo3:
        def on_fit_strat(self) -> None:
            pass

    with pytest.warns(UserWarning, match="on_fit_strat"):
        dispatcher.add(Typo3())
    with pytest.raises(ValueError, match="on_fit_strat"):
        CallbackDispatcher([Typo3()], strict_hooks=True)
    strict = CallbackDispatcher(strict_hooks=True)
    with pytest.raises(ValueError, match="on_fit_strat"):
        strict.add(Typo3())
    assert strict.callbacks == ()


def test_dispatcher_register_hook_and_call_names_are_known_to_later_callbacks() -> None:
    class Own:
        def on_generate_samples(self) -> str:
            return "own"

    class Fired:
        def on_epoch_summary(self) -> str:
            return "fired"

    dispatcher = CallbackDispatcher(strict_hooks=True)
    dispatcher.register_hook("on_generate_samples")
    dispatcher.add(Own())
    with pytest.raises(ValueError, match="not a known hook"):
        dispatcher.call("on_epoch_summary")  # strict: an unknown name that nothing implements is an error
    CallbackDispatcher(registry=dispatcher.registry).call("on_epoch_summary")  # lenient: fired, so now known
    dispatcher.add(Fired())
    assert dispatcher.call("on_epoch_summary") == ["fired"]
    with pytest.raises(ValueError, match="starting with 'on_'"):
        dispatcher.register_hook("generate")


def test_a_shared_registry_is_used_as_given() -> None:
    registry = HookRegistry()
    registry.register("on_plot")
    assert CallbackDispatcher(registry=registry).registry is registry


def test_names_registered_before_construction_are_known_to_the_constructors_callbacks() -> None:
    # What Fabric(hooks=[...]) does: register the names, then build the dispatcher with its callbacks.
    class Own:
        def on_my_event(self, value: int) -> int:
            return value + 1

        def on_plot(self) -> str:
            return "plot"

    registry = HookRegistry()
    for name in ("on_my_event", "on_plot"):
        registry.register(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dispatcher = CallbackDispatcher([Own()], strict_hooks=True, registry=registry)
    assert dispatcher.call("on_my_event", 1) == [2]
    assert dispatcher.call("on_plot") == ["plot"]
    with pytest.raises(ValueError, match=r"Fabric\(hooks=\['on_my_event'\]\)"):
        CallbackDispatcher([Own()], strict_hooks=True)  # without them: the message names the fix


def test_warned_classes_are_kept_by_name_so_the_registry_pickles() -> None:
    def local_class() -> type:
        class Local:
            def on_train_batch_ned(self) -> None:
                pass

        return Local

    registry = HookRegistry()
    with pytest.warns(UserWarning):
        registry.check_callback(local_class()(), strict=False)
    copy = pickle.loads(pickle.dumps(registry))
    assert copy.names == registry.names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copy.check_callback(local_class()(), strict=False)  # warned once, in the copy too


# rank_zero_only


def test_rank_zero_only_returns_the_function_itself_with_its_signature() -> None:
    def on_train_end(self: Any, trainer: Any, *, fabric: Any = None) -> None:
        pass

    before = inspect.signature(on_train_end)
    decorated = rank_zero_only(on_train_end)
    assert decorated is on_train_end
    assert inspect.signature(decorated) == before
    assert on_train_end._treadle_rank_zero_only is True  # type: ignore[attr-defined]


def test_rank_zero_only_on_static_and_class_methods_marks_the_function() -> None:
    def function() -> None:
        pass

    wrapped = staticmethod(function)
    assert rank_zero_only(wrapped) is wrapped
    assert function._treadle_rank_zero_only is True  # type: ignore[attr-defined]


def test_rank_zero_only_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="rank_zero_only"):
        rank_zero_only(3)
