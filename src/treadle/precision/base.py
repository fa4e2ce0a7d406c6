"""The precision extension point: a concrete class whose every method is a sensible no-op.

A new precision overrides only what it changes (``forward_context`` for autocast, ``convert_module`` for a
dtype, ``pre_backward``/``optimizer_step`` for loss scaling).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn


class Precision:
    """Full-precision defaults: nothing is cast, scaled or wrapped."""

    name: ClassVar[str] = "32-true"

    def convert_module(self, module: nn.Module) -> nn.Module:
        """Cast a module's parameters for this precision when it is set up."""
        return module

    @contextlib.contextmanager
    def module_init_context(self) -> Iterator[None]:
        """Context under which modules are created (``fabric.init_module()``)."""
        yield

    @contextlib.contextmanager
    def tensor_init_context(self) -> Iterator[None]:
        """Context under which plain tensors are created (``fabric.init_tensor()``)."""
        yield

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        """Context the wrapped module's forward runs in (autocast for mixed precision)."""
        return contextlib.nullcontext()

    def convert_input(self, data: Any) -> Any:
        """Cast floating-point inputs of a forward call."""
        return data

    def convert_output(self, data: Any) -> Any:
        """Cast floating-point outputs of a forward call back for the loss."""
        return data

    def pre_backward(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return the tensor to call ``backward`` on (scaled, under a grad scaler)."""
        return tensor

    def backward(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Call ``backward`` on the tensor ``pre_backward`` returns."""
        self.pre_backward(tensor).backward(*args, **kwargs)  # type: ignore[no-untyped-call]

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        """Step ``optimizer`` (through the grad scaler, where there is one); returns what ``step`` returns."""
        return optimizer.step(**kwargs)

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true scale before clipping (only a grad scaler needs this)."""

    @property
    def passes_through(self) -> bool:
        """Whether `backward` and `optimizer_step` do exactly ``tensor.backward()`` and ``optimizer.step()``.

        Fabric then calls those itself and skips this layer on every step. True unless a subclass (or the
        instance) replaces ``pre_backward``, ``backward`` or ``optimizer_step``. Fabric reads it when a
        module or optimizer is set up, so replace methods before ``setup``.
        """
        return inherits(self, Precision, ("pre_backward", "backward", "optimizer_step"))

    @property
    def requires_fabric_backward(self) -> bool:
        """Whether ``loss.backward()`` on a set-up model's output must be ``fabric.backward(loss)``.

        True where this precision changes backward (``passes_through`` is False); mixed precision says True
        always, as in Lightning Fabric, so a script moves between ``bf16-mixed`` and ``16-mixed`` unchanged.
        Fabric then raises at a ``loss.backward()`` that skips it.
        """
        return not self.passes_through

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The grad scaler, where this precision has one."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep of this precision (the grad scaler's state, where there is one)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def inherits(obj: object, base: type, names: tuple[str, ...]) -> bool:
    """Whether every method in `names` is `base`'s own: neither overridden by a subclass of `base` nor set
    on the instance. Lets a layer that only delegates be skipped when nothing has changed it."""
    own = vars(obj)
    return all(name not in own and getattr(type(obj), name) is getattr(base, name) for name in names)
