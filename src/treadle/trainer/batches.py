"""Walking a dataloader through one epoch: how many batches it has, and which batch is the last."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

__all__ = ["check_loader", "count_batches", "numbered", "set_sampler_epoch", "skip"]

_END = object()  # what next(iterator, _END) returns once a dataloader is exhausted


def check_loader(loader: Any, name: str) -> None:
    """Raise ``TypeError`` naming the argument if ``loader`` is not a ``DataLoader``."""
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"Trainer: {name} must be a torch.utils.data.DataLoader, got {type(loader).__name__}."
        )


def count_batches(loader: DataLoader[Any], limit: int | float | None, kind: str) -> int | float:
    """Batches per epoch after ``limit`` (a count or a fraction); ``math.inf`` for loaders without a length.

    Raises:
        ValueError: a fractional limit on a loader without a length, or no training batches at all.
    """
    try:
        total: int | float = len(loader)
    except TypeError:  # an IterableDataset without __len__: the epoch ends when the loader does
        total = math.inf
    if isinstance(limit, float):
        if math.isinf(total):
            raise ValueError(
                f"Trainer(limit_{kind}_batches={limit}) is a fraction, but the {kind} dataloader has no length. "
                "Pass a number of batches instead."
            )
        total = int(total * limit)
    elif isinstance(limit, int):
        total = min(total, limit)
    if kind == "train" and total == 0:
        raise ValueError(
            "fit(train_dataloaders=...) yields no batches (after limit_train_batches). Give it data."
        )
    return total


def set_sampler_epoch(loader: DataLoader[Any], epoch: int) -> None:
    """Tell the sampler (e.g. a DistributedSampler) which epoch it is, so it shuffles for that epoch."""
    for sampler in (loader.sampler, loader.batch_sampler):
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def numbered(batches: Iterator[Any], first: int, limit: int | float) -> Iterator[tuple[int, Any, bool]]:
    """Yield ``(batch_idx, batch, is_last)`` from ``first`` up to ``limit`` batches.

    With a known length a batch is fetched only when the loop asks for it, after the previous step's
    boundary, so a checkpoint saved there resumes with the RNG exactly as it was before that fetch. Without
    a length, one batch of look-ahead tells which batch is the last.
    """
    batch_idx = first
    if math.isinf(limit):
        pending = next(batches, _END)
        while pending is not _END:
            current, pending = pending, next(batches, _END)
            yield batch_idx, current, pending is _END
            batch_idx += 1
        return
    while batch_idx < limit:
        batch = next(batches, _END)
        if batch is _END:
            return
        yield batch_idx, batch, batch_idx + 1 >= limit
        batch_idx += 1


def skip(batches: Iterator[Any], count: int) -> bool:
    """Draw and discard ``count`` batches; False if the loader ran out first."""
    return all(next(batches, _END) is not _END for _ in range(count))
