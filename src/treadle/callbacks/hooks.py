"""Hook names, typo detection, the optional `Callback` base and `rank_zero_only`.

This module is the one place where the built-in hook names live. `HookRegistry` checks every callback's
``on_*`` methods against them when the callback is registered, so a misspelled hook is reported where the
mistake was made instead of silently never running.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

from treadle.callbacks.codegen import is_identifier
from treadle.errors import caller_stacklevel

__all__ = [
    "FABRIC_HOOKS",
    "KNOWN_HOOKS",
    "TRAINER_HOOKS",
    "Callback",
    "HookRegistry",
    "rank_zero_only",
]

FABRIC_HOOKS: tuple[str, ...] = (
    "on_after_setup",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_after_optimizer_step",
)
"""Hooks that `Fabric` fires itself."""

TRAINER_HOOKS: tuple[str, ...] = (
    "on_fit_start",
    "on_fit_end",
    "on_train_start",
    "on_train_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_save_checkpoint",
    "on_load_checkpoint",
    "on_exception",
)
"""Hooks that the `Trainer` fires; each also receives the keyword arguments ``trainer=`` and ``fabric=``."""

KNOWN_HOOKS: frozenset[str] = frozenset(FABRIC_HOOKS + TRAINER_HOOKS)
"""Every built-in hook name: what typo detection checks callbacks against."""

# Attribute set on functions decorated with `rank_zero_only`; the dispatcher reads it when it plans a call.
RANK_ZERO_ONLY_MARK = "_treadle_rank_zero_only"

# Names are compared without the shared "on_" prefix: with it, every pair of hooks already looks alike.
# At 0.75 a one- or two-letter typo and old names such as `on_epoch_end` are caught.
_TYPO_CUTOFF = 0.75
# For single words: a swapped or repeated letter in a three-letter word (`ned`, `edn` for `end`) scores 0.67.
_WORD_TYPO_CUTOFF = 0.6

# Correctly spelled words of hook names, grouped by meaning. Character similarity alone reports
# `on_test_batch_end` as a misspelling of `on_train_batch_end`, yet swapping a whole word for another
# meaning names a different hook on purpose (the user's test loop fires it). So two names with the same
# number of words that differ only in such words, each pair meaning different things, are not a typo.
# Synonyms share a meaning (`val` for `validation`, `training` for `train`): the user most likely meant the
# built-in hook, so those are still compared by spelling and reported.
_SYNONYMS: tuple[tuple[str, ...], ...] = (
    # phases of a run
    ("fit",),
    ("train", "training"),
    ("validation", "validate", "val"),
    ("test", "testing"),
    ("predict", "prediction"),
    ("eval", "evaluation", "evaluate"),
    ("sanity",),
    ("check",),
    # units and moments
    ("epoch", "epochs"),
    ("batch", "batches"),
    ("step", "steps"),
    ("start",),
    ("end",),
    ("before",),
    ("after",),
    # the other words of built-in hooks, and their neighbours
    ("setup",),
    ("teardown",),
    ("forward",),
    ("backward",),
    ("optimizer",),
    ("scheduler",),
    ("save",),
    ("load",),
    ("checkpoint",),
)
_HOOK_WORDS: dict[str, int] = {word: meaning for meaning, words in enumerate(_SYNONYMS) for word in words}

_T = TypeVar("_T")


class HookRegistry:
    """The hook names one `Fabric` knows: `KNOWN_HOOKS`, the names in `hooks` and those declared with
    `register`, and every name fired through `CallbackDispatcher.call`.

    Raises:
        TypeError: `hooks` is not a list (or another sequence) of names, or a name is not a str.
        ValueError: a name in `hooks` is not an identifier starting with ``on_``.

    Example:
        >>> registry = HookRegistry()
        >>> registry.register("on_plot")
        >>> "on_plot" in registry, "on_train_batch_end" in registry
        (True, True)
    """

    def __init__(self, hooks: Sequence[str] = ()) -> None:
        if isinstance(hooks, str) or not isinstance(hooks, Sequence):
            raise TypeError(f"hooks={hooks!r} must be a list of hook names, e.g. hooks=['on_my_event'].")
        self._names: set[str] = set(KNOWN_HOOKS)
        # One warning per (class, method) for the lifetime of this registry, however many instances of the
        # class are registered. Classes are kept by name, so that the registry pickles (ddp_spawn) even
        # when a warned class cannot be.
        self._warned: set[tuple[str, str, str]] = set()
        for name in hooks:
            self.register(name)

    @property
    def names(self) -> frozenset[str]:
        """Every name this registry knows."""
        return frozenset(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def register(self, name: str) -> None:
        """Declare a hook of your own, so that callbacks implementing it are not reported as typos.

        Args:
            name: the hook name; a Python identifier starting with ``on_``.

        Raises:
            TypeError: `name` is not a string.
            ValueError: `name` is not an identifier or does not start with ``on_``.

        Example:
            >>> HookRegistry().register("on_generate_samples")
        """
        if not isinstance(name, str):
            raise TypeError(
                f"register_hook(name={name!r}): the hook name must be a str, got {type(name).__name__}. "
                f"Pass the method name your callbacks implement, e.g. register_hook('on_generate_samples')."
            )
        if not is_identifier(name) or not name.startswith("on_"):
            raise ValueError(
                f"register_hook(name={name!r}): a hook name must be a Python identifier starting with 'on_', "
                f"because it is the name of the callback method that implements it. "
                f"For example: register_hook('on_generate_samples')."
            )
        self._names.add(name)

    def record_call(self, name: str) -> None:
        """Remember a name fired through `call()`, so callbacks registered later may implement it.

        Unlike `register`, any identifier is accepted: `call` may fire events not named ``on_*``.
        """
        self._names.add(name)

    def check_call(self, name: str, *, implemented: bool, strict: bool) -> None:
        """Report a name fired through `call()` that is not known and that no callback implements.

        Warns once per name when it is close in spelling to a known hook (it would never run anything);
        under `strict`, every such name is an error.

        Raises:
            ValueError: `strict` is true and `name` is neither known nor implemented.
        """
        if implemented or name in self._names:
            return
        close = self._close_matches(name) if name.startswith("on_") else _close_names(name, self._names)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        declare = f"If it is your own hook, declare it with Fabric(hooks=[{name!r}]) or fabric.register_hook({name!r})."
        if strict:
            raise ValueError(
                f"fabric.call({name!r}): no callback implements it and it is not a known hook; {hint}"
                f"strict_hooks=True makes this an error. {declare}"
            )
        if close and ("call", name, "") not in self._warned:
            self._warned.add(("call", name, ""))
            warnings.warn(
                f"fabric.call({name!r}): no callback implements it and it is not a known hook; {hint}"
                f"It calls nothing. {declare}",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )

    def check_callback(self, callback: object, *, strict: bool) -> None:
        """Report the callback's ``on_*`` methods that match no known hook.

        A method whose name is close in spelling to a known hook gets one `UserWarning` per (class,
        method): it is almost certainly a misspelling and would never run. Swapping whole words for words of
        another meaning is not a misspelling: ``on_test_batch_end`` is not reported as ``on_train_batch_end``,
        while ``on_train_batch_ned`` and ``on_val_batch_end`` are. Other unknown names are accepted (they may be
        hooks the user fires with `call`) unless `strict` is true.

        Args:
            callback: the callback object about to be registered.
            strict: raise for every unknown ``on_*`` method instead of warning about close ones.

        Raises:
            ValueError: `strict` is true and the callback has ``on_*`` methods that are not known hooks.

        Example:
            >>> class Typo:
            ...     def on_train_batch_ned(self): ...
            >>> HookRegistry().check_callback(Typo(), strict=False)  # doctest: +SKIP
            UserWarning: `Typo.on_train_batch_ned` looks like a misspelling of `on_train_batch_end`; ...
        """
        unknown = [name for name in _hook_method_names(callback) if name not in self._names]
        if not unknown:
            return
        cls = type(callback)
        if strict:
            described = []
            for name in unknown:
                close = self._close_matches(name)
                hint = f" (did you mean {', '.join(f'`{c}`' for c in close)}?)" if close else ""
                described.append(f"`{name}`{hint}")
            raise ValueError(
                f"Callback `{cls.__name__}` defines `on_*` methods that are not known hooks: {', '.join(described)}. "
                f"strict_hooks=True makes unknown `on_*` methods an error. Rename each misspelled method, or "
                f"declare your own hook with Fabric(hooks=['{unknown[0]}']) or "
                f"fabric.register_hook('{unknown[0]}') before add_callback."
            )
        for name in unknown:
            close = self._close_matches(name)
            warned = (cls.__module__, cls.__qualname__, name)
            if not close or warned in self._warned:
                continue
            self._warned.add(warned)
            warnings.warn(
                f"`{cls.__name__}.{name}` looks like a misspelling of `{close[0]}`; it will never be called. "
                f"Rename it, or if it is your own hook, declare it with Fabric(hooks=['{name}']) or "
                f"fabric.register_hook('{name}') before add_callback.",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )

    def _close_matches(self, name: str) -> list[str]:
        known = sorted(self._names)
        # A misspelled word next to a swapped one (`on_test_batch_ned`): suggest the name the user meant.
        corrected = [fixed for other in known if (fixed := _respelled(name, other)) is not None]
        by_stem = {
            other[3:]: other
            for other in known
            if other.startswith("on_") and not _is_word_substitution(name, other)
        }
        stems = difflib.get_close_matches(name[3:], list(by_stem), n=3, cutoff=_TYPO_CUTOFF)
        return list(dict.fromkeys([*corrected, *(by_stem[stem] for stem in stems)]))[:3]


def _close_names(name: str, known: set[str]) -> list[str]:
    return difflib.get_close_matches(name, sorted(known), n=3, cutoff=_TYPO_CUTOFF)


def _word_pairs(name: str, known: str) -> list[tuple[str, str]] | None:
    """The words of `name` and `known` side by side, or None when their word counts differ."""
    words, known_words = name.split("_"), known.split("_")
    if len(words) != len(known_words):
        return None
    return list(zip(words, known_words, strict=True))


def _is_swap(word: str, other: str) -> bool:
    return word in _HOOK_WORDS and other in _HOOK_WORDS and _HOOK_WORDS[word] != _HOOK_WORDS[other]


def _is_misspelled(word: str, other: str) -> bool:
    similarity = difflib.SequenceMatcher(None, word, other).ratio()
    return word not in _HOOK_WORDS and similarity >= _WORD_TYPO_CUTOFF


def _is_word_substitution(name: str, known: str) -> bool:
    """Whether `name` is `known` with whole words swapped for words of another meaning (see _SYNONYMS)."""
    pairs = _word_pairs(name, known)
    differing = [(word, other) for word, other in pairs or () if word != other]
    return bool(differing) and all(_is_swap(word, other) for word, other in differing)


def _respelled(name: str, known: str) -> str | None:
    """`name` with its misspelled words spelled as in `known`, when it also swaps a word of `known` for one
    of another meaning and differs in nothing else; otherwise None."""
    pairs = _word_pairs(name, known)
    if pairs is None:
        return None
    fixed: list[str] = []
    swapped = misspelled = False
    for word, other in pairs:
        if word == other or _is_swap(word, other):
            swapped |= word != other
            fixed.append(word)
        elif _is_misspelled(word, other):
            misspelled = True
            fixed.append(other)
        else:
            return None
    # Without a swap, the plain spelling comparison already covers the name.
    return "_".join(fixed) if swapped and misspelled else None


def _hook_method_names(callback: object) -> list[str]:
    """Public ``on_*`` names of `callback` (its class hierarchy and its instance dict) that hold callables."""
    names: set[str] = {name for name in dir(type(callback)) if name.startswith("on_")}
    try:
        instance_dict = object.__getattribute__(callback, "__dict__")
    except AttributeError:  # __slots__ classes have no instance dict
        instance_dict = {}
    names.update(name for name in instance_dict if isinstance(name, str) and name.startswith("on_"))
    found = []
    for name in sorted(names):
        # Looked up statically: a property named `on_*` must not run just because we are checking names.
        raw = instance_dict[name] if name in instance_dict else _static_class_lookup(type(callback), name)
        if callable(raw) or isinstance(raw, (staticmethod, classmethod)):
            found.append(name)
    return found


def _static_class_lookup(cls: type, name: str) -> object:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


def rank_zero_only(fn: _T) -> _T:
    """Mark one hook method so that it runs only on the process with global rank 0.

    The function is returned unchanged (its signature stays visible to argument filtering); the
    dispatcher reads the mark when it plans a call. To restrict a whole callback, set the class attribute
    ``rank_zero_only = True`` instead.

    Args:
        fn: a function, `staticmethod` or `classmethod`.

    Returns:
        `fn` itself, marked.

    Raises:
        TypeError: `fn` is not callable.

    Example:
        >>> class Printer:
        ...     @rank_zero_only
        ...     def on_train_end(self):
        ...         print("done")
    """
    target: object = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
    if not callable(target):
        raise TypeError(
            f"@rank_zero_only decorates a hook method, got {fn!r} ({type(fn).__name__}). "
            f"Put it directly above the `def` of the method."
        )
    setattr(target, RANK_ZERO_ONLY_MARK, True)
    return fn


class Callback:
    """Optional base class that lists every built-in hook as a documented no-op.

    Nothing needs to inherit from it: any object with a method named like a hook is a callback. Inherit
    for IDE completion and these docs. Methods you do not override are never called.

    Arguments are delivered as the caller passes them: positional arguments unchanged, and of the keyword
    arguments only those your method declares (all of them if it takes ``**kwargs``). So an override may
    accept just the keywords it needs, e.g. ``def on_train_batch_end(self, loss, output, batch, batch_idx,
    trainer)``. Hooks fired by the Trainer also get the keywords ``trainer=`` and ``fabric=``.

    Attributes:
        rank_zero_only: set to True in a subclass to run every hook of the callback on global rank 0 only.
        trainer_order: where the Trainer runs this callback: 0 (default) in the order given, before the
            model's own hook methods; 1 after the model (callbacks that judge what the model logged, such
            as EarlyStopping); 2 after those (callbacks that save everyone's state, such as
            ModelCheckpoint). A plain Fabric loop calls callbacks in the order given.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_train_batch_end(self, loss, output, batch, batch_idx):
        ...         print(float(loss))
    """

    rank_zero_only: bool = False
    trainer_order: int = 0

    @property
    def state_key(self) -> str:
        """Key under which this callback's state is stored in checkpoints: its class's qualified name."""
        return type(self).__qualname__

    # Hooks fired by Fabric.

    def on_after_setup(self, *args: Any, **kwargs: Any) -> None:
        """After `fabric.setup(module, ...)` has moved and wrapped a model; receives ``fabric, module``."""

    def on_before_backward(self, *args: Any, **kwargs: Any) -> None:
        """Before `fabric.backward(loss)` computes gradients; receives ``loss``."""

    def on_after_backward(self, *args: Any, **kwargs: Any) -> None:
        """After `fabric.backward(loss)` has computed gradients; receives no arguments from Fabric."""

    def on_before_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Before a wrapped optimizer's `step()` runs; receives ``optimizer`` and ``strategy``."""

    def on_after_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """After a wrapped optimizer's `step()`; receives ``optimizer`` and ``strategy``."""

    # Hooks fired by the Trainer (each also receives trainer= and fabric=).

    def on_fit_start(self, *args: Any, **kwargs: Any) -> None:
        """When `Trainer.fit` starts, before any loop runs."""

    def on_fit_end(self, *args: Any, **kwargs: Any) -> None:
        """When `Trainer.fit` finishes normally."""

    def on_train_start(self, *args: Any, **kwargs: Any) -> None:
        """Before the first training epoch."""

    def on_train_end(self, *args: Any, **kwargs: Any) -> None:
        """After the last training epoch."""

    def on_train_epoch_start(self, *args: Any, **kwargs: Any) -> None:
        """At the start of each training epoch."""

    def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        """At the end of each training epoch."""

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        """Before the training step of a batch; receives ``batch, batch_idx``."""

    def on_before_zero_grad(self, *args: Any, **kwargs: Any) -> None:
        """Before the Trainer zeroes the gradients after an optimizer step; receives ``optimizer``."""

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """After the training step of a batch; receives ``loss, output, batch, batch_idx``."""

    def on_validation_start(self, *args: Any, **kwargs: Any) -> None:
        """Before a validation run."""

    def on_validation_end(self, *args: Any, **kwargs: Any) -> None:
        """After a validation run."""

    def on_validation_epoch_start(self, *args: Any, **kwargs: Any) -> None:
        """At the start of a validation epoch."""

    def on_validation_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        """At the end of a validation epoch."""

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        """Before the validation step of a batch; receives ``batch, batch_idx``."""

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """After the validation step of a batch; receives ``output, batch, batch_idx``."""

    def on_save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        """Before a checkpoint is written; receives the ``checkpoint`` dict, which the callback may edit."""

    def on_load_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        """After a checkpoint is read; receives the loaded ``checkpoint`` dict."""

    def on_exception(self, *args: Any, **kwargs: Any) -> None:
        """When fitting stops with an exception, before it propagates; receives ``exception``."""


# The no-op functions above: the dispatcher skips a callback whose hook still resolves to one of them.
NOOP_HOOKS: frozenset[object] = frozenset(Callback.__dict__[name] for name in KNOWN_HOOKS)
