"""What the Trainer asks of a model: its methods, the loss ``training_step`` returns, and routing steps
through ``forward`` so that strategies and precisions see them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["StepRouter", "check_model", "loss_of"]


class StepRouter(nn.Module):
    """Calls ``training_step``/``validation_step`` from ``forward``.

    Set up with Fabric, the router is what the strategy wraps (DDP) and what runs under the precision's
    autocast, so the steps get both, exactly as a forward call would. Calling ``model.training_step``
    directly would bypass DDP's forward and with it the gradient synchronisation it prepares.

    Example::

        module = fabric.setup(StepRouter(model))
        loss = module("training_step", batch, batch_idx)
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, step: str, batch: Any, batch_idx: int) -> Any:
        return getattr(self.module, step)(batch, batch_idx)


def check_model(model: Any, method: str, needs: tuple[str, ...], because: str = "") -> None:
    """Raise if ``model`` is not an ``nn.Module`` with the methods ``needs``.

    Raises:
        TypeError: it is not a module, or a method is missing; the message names them.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Trainer.{method}(model=...) takes a torch.nn.Module, got {type(model).__name__}.")
    missing = [name for name in needs if not callable(getattr(model, name, None))]
    if missing:
        reason = f" because {because}" if because else ""
        raise TypeError(
            f"Trainer.{method}(model=...): {type(model).__name__} needs the method(s) "
            f"{', '.join(missing)}{reason}. See docs/trainer.md for what each returns."
        )


def loss_of(output: Any) -> torch.Tensor:
    """The loss in what ``training_step`` returned: the tensor itself, or the dict's ``"loss"``.

    Raises:
        TypeError: there is no one-element loss tensor.
        ValueError: the loss does not require grad, so backward would fail.
    """
    loss = output.get("loss") if isinstance(output, Mapping) else output
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        found = f"a dict with keys {sorted(output)}" if isinstance(output, Mapping) else type(output).__name__
        raise TypeError(
            f"training_step returned {found}; it must return the loss as a one-element tensor, or a dict "
            "with the loss under 'loss'."
        )
    if not loss.requires_grad:
        raise ValueError(
            "training_step returned a loss that does not require grad (computed under torch.no_grad, or "
            "detached), so there is nothing to backpropagate. Return the loss before .item()/.detach()."
        )
    return loss
