"""How far the epoch's sample order has got, in samples, so a resumed run continues it with any world size.

With the same number of processes, a resumed run skips the batches it already trained on (which replays
the data pipeline bitwise). With a different number, those batch counts mean other samples, so the
position is carried as samples of the epoch's global order and the sampler starts there
(:class:`treadle.sampler.ResumableDistributedSampler`): every sample of the interrupted epoch is still
seen exactly once. Where that cannot be done, a warning says so and what to do instead.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch.utils.data import DataLoader

from treadle.errors import caller_stacklevel
from treadle.sampler import ResumableDistributedSampler


def _sampler(loader: DataLoader[Any]) -> ResumableDistributedSampler[Any] | None:
    for candidate in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if isinstance(candidate, ResumableDistributedSampler):
            return candidate
    return None


def _batch_size(loader: DataLoader[Any]) -> int | None:
    if loader.batch_size is not None:
        return int(loader.batch_size)
    size = getattr(loader.batch_sampler, "batch_size", None)
    return size if isinstance(size, int) else None


class DataPosition:
    """The Trainer's record of where this epoch's data stands (see the module docstring)."""

    def __init__(self) -> None:
        self.start_samples = 0  # the sampler began this epoch at this position of the global order
        self.start_batches = 0  # ... when progress.batches_done was this

    def state_dict(self, loader: DataLoader[Any], batches_done: int, world_size: int) -> dict[str, Any]:
        size = _batch_size(loader)
        done = (
            None
            if size is None
            else self.start_samples + (batches_done - self.start_batches) * size * world_size
        )
        return {"world_size": world_size, "samples_done": done, "offset": self.start_samples}

    def batches_to_skip(self, batches_done: int) -> int:
        """Batches of a fresh iterator to skip to reach where the epoch stands."""
        return batches_done - self.start_batches

    def end_epoch(self, loader: DataLoader[Any] | None) -> None:
        sampler = None if loader is None else _sampler(loader)
        if sampler is not None:
            sampler.start_position = 0
        self.start_samples = self.start_batches = 0

    def restore(
        self,
        saved: Any,
        loader: DataLoader[Any],
        *,
        batches_done: int,
        epoch: int,
        world_size: int,
        limited: bool,
        path: str,
    ) -> tuple[int, DataLoader[Any]]:
        """Continue the epoch where ``saved`` (a checkpoint's ``data_position``) left it.

        Returns:
            The new ``batches_done`` (the batches of this epoch, as this run counts them, already done) and
            the loader to train on: ``loader``, or, for one process resuming a multi-process run, ``loader``
            rebuilt on the same order (a one-rank ResumableDistributedSampler).
        """
        self.start_samples = self.start_batches = 0
        if not isinstance(saved, dict) or batches_done == 0:
            return batches_done, loader  # an epoch boundary (or an older checkpoint): nothing to carry over
        old_world, offset, done = saved.get("world_size"), saved.get("offset", 0), saved.get("samples_done")
        if old_world == world_size and not offset:
            return batches_done, loader  # the same split of the same order: skipping batches replays it
        sampler = _sampler(loader)
        if sampler is None and world_size == 1 and isinstance(old_world, int) and old_world > 1:
            from treadle.data import prepare_dataloader

            try:
                rebuilt = prepare_dataloader(loader, {"num_replicas": 1, "rank": 0}, 0)
            except TypeError:  # a sampler of the user's own: its order is not ours to continue
                rebuilt = loader
            if _sampler(rebuilt) is not None:
                loader, sampler = rebuilt, _sampler(rebuilt)
        size = _batch_size(loader)
        if sampler is None or not isinstance(done, int) or size is None or limited or old_world == 1:
            why = (
                "a one-process run orders samples with its own sampler"
                if old_world == 1 or sampler is None
                else "the batch size or limit_train_batches keeps the sample count from being known"
            )
            warnings.warn(
                f"Trainer: checkpoint {path!r} was written by {old_world} process(es) and this run has "
                f"{world_size}, mid-way through epoch {epoch}; its position in the epoch cannot be carried over "
                f"({why}), so the rest of epoch {epoch} is {batches_done} batches short of a full epoch of this "
                "run's order: some of its samples are seen twice or not at all. For an exact continuation, "
                "resume from a checkpoint written at the end of an epoch, or with the same number of processes.",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )
            return batches_done, loader
        full = len(loader)  # batches of a whole epoch; the sampler starts at 0 until here
        sampler.start_position = done
        remaining = len(loader)
        self.start_samples, self.start_batches = done, max(0, full - remaining)
        return self.start_batches, loader
