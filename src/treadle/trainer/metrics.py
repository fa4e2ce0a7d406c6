"""Turning what ``validation_step`` returns into epoch metrics: means weighted by batch size, over all ranks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from treadle.fabric import Fabric

__all__ = ["EpochMeans", "batch_size_of", "step_metrics"]


def step_metrics(output: Any, prefix: str, where: str) -> dict[str, torch.Tensor | float]:
    """Name the scalars a step returned: a tensor is ``<prefix>loss``; a dict's entries are ``<prefix><key>``.

    Raises:
        TypeError: a value is not a number or a one-element tensor.
    """
    if output is None:
        return {}
    entries = output if isinstance(output, Mapping) else {"loss": output}
    named: dict[str, torch.Tensor | float] = {}
    for key, value in entries.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            named[f"{prefix}{key}"] = value.detach().reshape(())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            named[f"{prefix}{key}"] = float(value)
        else:
            shape = (
                f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
            )
            raise TypeError(
                f"{where} returned {shape} for {key!r}; return single numbers (e.g. loss.mean(), or a dict "
                "of them) so they can be averaged over the epoch."
            )
    return named


def batch_size_of(batch: Any) -> int:
    """The length of the first tensor found in the batch (1 if it holds no tensor with a batch dimension)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else 1
    values = (
        batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    )
    for value in values:
        size = batch_size_of(value)
        if isinstance(value, torch.Tensor) or size != 1:
            return size
    return 1


class EpochMeans:
    """Running sums of per-batch values times batch size, reduced over ranks once at the end.

    Tensors stay on their device while summing, so no step waits for the GPU; the only synchronisation is
    the one collective in ``compute``.

    Example::

        means = EpochMeans()
        means.update({"val_loss": torch.tensor(0.5)}, weight=32)
        means.compute(fabric)  # {"val_loss": 0.5}
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {}
        self._weight = 0

    def update(self, values: Mapping[str, torch.Tensor | float], weight: int) -> None:
        """Add one batch's ``values``, weighted by its batch size ``weight``; tensors are not read.

        Raises:
            ValueError: the batch has other metric names than the batches before it.
        """
        if self._weight and values.keys() != self._sums.keys():
            raise ValueError(
                f"validation_step returned the metrics {sorted(values)} for one batch and {sorted(self._sums)} "
                "for an earlier one. Return the same names for every batch."
            )
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + value * weight
        self._weight += weight

    def compute(self, fabric: Fabric) -> dict[str, float]:
        """The weighted means over every rank's batches (every rank must call this)."""
        if not self._sums:
            return {}
        totals = [
            torch.as_tensor(value, dtype=torch.float64).to(fabric.device) for value in self._sums.values()
        ]
        weight = torch.tensor(float(self._weight), dtype=torch.float64, device=fabric.device)
        reduced = fabric.all_reduce(torch.stack([*totals, weight]), reduce_op="sum").tolist()
        count = reduced[-1]
        return {
            name: (total / count if count else math.nan)
            for name, total in zip(self._sums, reduced[:-1], strict=True)
        }
