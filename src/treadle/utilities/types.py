"""Protocols for what Fabric and the Trainer accept as optimizers and schedulers (``isinstance`` works).

They match any object with the methods, so user-written optimizers and schedulers count as well as
``torch.optim``'s, and so do set-up optimizers (``fabric.setup(model, optimizer)``).

Example::

    if isinstance(output, Optimizable): ...
    elif isinstance(output, LRScheduler): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["LRScheduler", "Optimizable", "ReduceLROnPlateau", "Steppable"]


@runtime_checkable
class Steppable(Protocol):
    """Anything with ``step(closure=None)``."""

    def step(self, closure: Callable[[], Any] | None = ...) -> Any: ...


@runtime_checkable
class Optimizable(Steppable, Protocol):
    """An optimizer: ``step``, ``zero_grad``, ``param_groups``, ``state`` and a state dict."""

    param_groups: list[dict[Any, Any]]
    defaults: dict[Any, Any]
    state: Any

    def zero_grad(self, set_to_none: bool = ...) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@runtime_checkable
class LRScheduler(Protocol):
    """A learning-rate scheduler stepped once per interval (``torch.optim.lr_scheduler.LRScheduler``'s shape)."""

    optimizer: Any
    base_lrs: list[float]

    def step(self, epoch: int | None = ...) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@runtime_checkable
class ReduceLROnPlateau(Protocol):
    """A scheduler stepped with the monitored value: ``step(metrics)``."""

    optimizer: Any
    mode: str

    def step(self, metrics: float | int | Any, epoch: int | None = ...) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...
