"""Callbacks: the dispatcher behind `fabric.call`, hook names with typo detection, and the `Callback` base."""

from __future__ import annotations

from treadle.callbacks.dispatch import CallbackDispatcher
from treadle.callbacks.hooks import (
    FABRIC_HOOKS,
    KNOWN_HOOKS,
    TRAINER_HOOKS,
    Callback,
    HookRegistry,
    rank_zero_only,
)

__all__ = [
    "FABRIC_HOOKS",
    "KNOWN_HOOKS",
    "TRAINER_HOOKS",
    "Callback",
    "CallbackDispatcher",
    "HookRegistry",
    "rank_zero_only",
]
