"""A DistributedSampler that can start an epoch part-way through its global order.

The epoch's order is one permutation of the dataset (seeded with ``seed + epoch``, the same on every
rank), dealt round-robin to the ranks. After ``N`` batches of ``B`` samples on each of ``W`` ranks, the
first ``N * B * W`` positions of that order are done, whatever ``W`` was. A job resumed with another number
of ranks starts its sampler at that position, and the rest of the order is dealt to the new ranks: no
sample of the epoch is seen twice or skipped (beyond the padding every DistributedSampler adds to make the
shares equal).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
from torch.utils.data import DistributedSampler

T = TypeVar("T")


class ResumableDistributedSampler(DistributedSampler[T]):
    """``torch.utils.data.DistributedSampler`` with ``start_position``: positions of this epoch's global
    order already trained on. At 0 (the default) it yields exactly what DistributedSampler yields."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_position = 0

    def _remaining(self) -> int:
        left = max(0, len(self.dataset) - self.start_position)  # type: ignore[arg-type]
        if self.drop_last:
            return left // self.num_replicas
        return math.ceil(left / self.num_replicas)

    def __len__(self) -> int:
        if self.start_position == 0:
            return super().__len__()
        return self._remaining()

    def __iter__(self) -> Iterator[T]:
        if self.start_position == 0:
            yield from super().__iter__()
            return
        size = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(size, generator=generator).tolist()
        else:
            order = list(range(size))
        rest = order[self.start_position :]
        share = self._remaining()
        total = share * self.num_replicas
        if total > len(rest) and rest:  # pad with the start of the rest, as DistributedSampler pads
            rest = (rest * math.ceil(total / len(rest)))[:total]
        yield from rest[self.rank : total : self.num_replicas]
