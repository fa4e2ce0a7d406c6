"""The Trainer's loop settings, validated once in ``Trainer.__init__`` before any process group exists."""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["LIGHTNING_ALIASES", "LoopSettings", "parse_max_time", "translate_lightning_arguments"]

ClipAlgorithm = Literal["norm", "value"]
UNLIMITED = -1


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How long to train, how often to step, validate, clip and log. Every field is checked on creation.

    The fields are the ``Trainer`` arguments of the same names (see ``Trainer`` for their meaning), with
    ``max_time`` already converted to seconds.

    Raises:
        ValueError: a value is out of range; the message names the ``Trainer`` argument.
        TypeError: a value has the wrong type.
    """

    max_epochs: int | None = None
    max_steps: int | None = None
    max_time: float | None = None
    grad_accum_steps: int = 1
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    val_every_n_epochs: int | None = 1
    val_every_n_steps: int | None = None
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: ClipAlgorithm = "norm"
    checkpoint_dir: str | os.PathLike[str] = "checkpoints"
    enable_progress_bar: bool = True
    log_every_n_steps: int = 10

    def __post_init__(self) -> None:
        for name in ("max_epochs", "max_steps"):
            value = getattr(self, name)
            if value is not None and (_not_int(value) or (value < 1 and value != UNLIMITED)):
                raise ValueError(
                    f"Trainer({name}={value!r}) must be a positive int, -1 for no limit, or None. "
                    f"Example: {name}=10."
                )
        for name in ("grad_accum_steps", "log_every_n_steps"):
            value = getattr(self, name)
            if _not_int(value) or value < 1:
                raise ValueError(f"Trainer({name}={value!r}) must be a positive int, e.g. {name}=4.")
        for name in ("val_every_n_epochs", "val_every_n_steps"):
            value = getattr(self, name)
            if value is not None and (_not_int(value) or value < 1):
                raise ValueError(f"Trainer({name}={value!r}) must be a positive int, or None to turn it off.")
        _check_limit("limit_train_batches", self.limit_train_batches, allow_zero=False)
        _check_limit("limit_val_batches", self.limit_val_batches, allow_zero=True)
        clip = self.gradient_clip_val
        if clip is not None and (
            isinstance(clip, bool)
            or not isinstance(clip, (int, float))
            or not math.isfinite(clip)
            or clip <= 0
        ):
            raise ValueError(
                f"Trainer(gradient_clip_val={clip!r}) must be a positive number, or None for no clipping."
            )
        if self.gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError(
                f"Trainer(gradient_clip_algorithm={self.gradient_clip_algorithm!r}) is not an algorithm. "
                "Choose 'norm' (scale all gradients so their total norm is at most gradient_clip_val) or "
                "'value' (clamp each gradient element to +-gradient_clip_val)."
            )
        if not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            raise TypeError(
                f"Trainer(checkpoint_dir={self.checkpoint_dir!r}) must be a folder path (str or os.PathLike)."
            )
        object.__setattr__(self, "checkpoint_dir", os.fspath(self.checkpoint_dir))
        if not isinstance(self.enable_progress_bar, bool):
            raise TypeError(
                f"Trainer(enable_progress_bar={self.enable_progress_bar!r}) must be True or False."
            )

    @property
    def has_limit(self) -> bool:
        """Whether fit ends on its own (some of max_epochs, max_steps, max_time is set and not -1)."""
        limits = (self.max_epochs, self.max_steps)
        return any(value is not None and value != UNLIMITED for value in limits) or self.max_time is not None


def parse_max_time(value: Any) -> float | None:
    """``Trainer(max_time=...)`` in seconds: a number of seconds, a ``datetime.timedelta``, or
    ``"DD:HH:MM:SS"``.

    Raises:
        ValueError: the value is not one of these forms, or not positive.

    Example::

        parse_max_time("00:01:30:00")  # 5400.0
    """
    if value is None:
        return None
    seconds: float
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        parts = value.split(":")
        try:
            days, hours, minutes, secs = (int(part) for part in parts)
        except ValueError:
            raise ValueError(
                f"Trainer(max_time={value!r}) must read 'DD:HH:MM:SS' (e.g. '00:12:00:00' for 12 hours), "
                "or be a number of seconds or a datetime.timedelta."
            ) from None
        if min(days, hours, minutes, secs) < 0:
            raise ValueError(
                f"Trainer(max_time={value!r}) has a negative field; each of 'DD:HH:MM:SS' must be >= 0, "
                "e.g. '00:01:30:00' for 90 minutes."
            )
        seconds = float(((days * 24 + hours) * 60 + minutes) * 60 + secs)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(
            f"Trainer(max_time={value!r}) must be a number of seconds, a datetime.timedelta, or 'DD:HH:MM:SS'."
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"Trainer(max_time={value!r}) must be a positive duration.")
    return seconds


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _check_limit(name: str, value: Any, allow_zero: bool) -> None:
    if value is None:
        return
    smallest = 0 if allow_zero else 1
    if isinstance(value, float) and not isinstance(value, bool):
        if 0.0 < value <= 1.0 or (allow_zero and value == 0.0):
            return
    elif not _not_int(value) and value >= smallest:
        return
    zero = " (0 turns validation off)" if allow_zero else ""
    raise ValueError(
        f"Trainer({name}={value!r}) must be an int >= {smallest} (a number of batches{zero}), a float in "
        f"(0, 1] (a fraction of the dataloader), or None for all batches."
    )


# Lightning Trainer arguments that mean exactly what a treadle argument means: accepted under either name.
LIGHTNING_ALIASES = {
    "accumulate_grad_batches": "grad_accum_steps",
    "check_val_every_n_epoch": "val_every_n_epochs",
    "validation_frequency": "val_every_n_epochs",  # the name in Lightning's build_your_own_trainer example
    "logger": "loggers",
}

# Lightning Trainer arguments treadle's Trainer does not take, with what to write instead.
_NOT_TAKEN = {
    "val_check_interval": "validate every n optimizer steps with val_every_n_steps=n (an int); validating at a "
    "fraction of an epoch is not offered",
    "default_root_dir": "pass checkpoint_dir='...' for last.ckpt and give each logger its folder, e.g. "
    "loggers=CSVLogger('logs')",
    "enable_checkpointing": "the Trainer writes checkpoint_dir/last.ckpt on SIGTERM only; for checkpoints during "
    "training add callbacks=[ModelCheckpoint(...)]",
    "checkpoint_frequency": "add callbacks=[ModelCheckpoint(every_n_epochs=n)]",
    "fast_dev_run": "pass max_steps=1 and limit_val_batches=1 for a quick run through every hook",
    "min_epochs": "the Trainer stops at the first limit reached (max_epochs, max_steps, max_time) or when a "
    "callback sets trainer.should_stop; it has no minimum",
    "min_steps": "the Trainer stops at the first limit reached (max_epochs, max_steps, max_time) or when a "
    "callback sets trainer.should_stop; it has no minimum",
    "num_sanity_val_steps": "no sanity validation runs before fit; call trainer.validate(model, val_loader) "
    "first if you want one",
    "deterministic": "call treadle.seed_everything(seed) and torch.use_deterministic_algorithms(True) before "
    "building the Trainer",
    "benchmark": "set torch.backends.cudnn.benchmark = True yourself",
    "profiler": "add callbacks=[Profiler(...)]",
    "overfit_batches": "pass limit_train_batches=n and the same loader for validation",
}


def translate_lightning_arguments(given: dict[str, Any], treadle_names: Sequence[str]) -> dict[str, Any]:
    """Lightning Trainer arguments passed to treadle's ``Trainer``, as ``{treadle name: value}``.

    Raises:
        TypeError: an argument is not one the Trainer takes: the message says what to write instead
            (or the closest names), or two of its Lightning names stand for the same treadle argument.
    """
    translated: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name, value in given.items():
        target = LIGHTNING_ALIASES.get(name)
        if target is None:
            if name in _NOT_TAKEN:
                raise TypeError(
                    f"Trainer({name}=...) is a Lightning Trainer argument treadle does not take: "
                    f"{_NOT_TAKEN[name]}."
                )
            close = difflib.get_close_matches(name, [*treadle_names, *LIGHTNING_ALIASES], n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise TypeError(
                f"Trainer() got an unexpected keyword argument {name!r}.{hint} The arguments are "
                f"listed in help(treadle.Trainer)."
            )
        if target in translated:
            raise TypeError(f"Trainer({source[target]}=..., {name}=...) both set {target}; pass one of them.")
        translated[target], source[target] = value, name
    return translated
