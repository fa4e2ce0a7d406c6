"""Dataloaders: each rank reads its own share (DistributedSampler), workers are seeded per rank, and the
set-up loader (`FabricDataLoader`) advances the sampler's epoch and delivers batches on the device."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from treadle.sampler import ResumableDistributedSampler
from treadle.seed import WorkerSeeder, make_worker_init_fn, requested_seed, requested_worker_seed
from treadle.tree import move_to_device

_D = TypeVar("_D")  # what the dataset's items are


def prepare_dataloader(
    loader: DataLoader[Any], sampler_kwargs: dict[str, int] | None, global_rank: int
) -> DataLoader[Any]:
    """Return ``loader`` rebuilt with a DistributedSampler when ``sampler_kwargs`` asks for partitioning.

    ``sampler_kwargs`` holds ``num_replicas`` and ``rank``; None (one process, or the user opted out) keeps
    the loader. Shuffling, ``drop_last`` and the batch size are kept, also when they come from a plain
    ``BatchSampler`` passed as ``batch_sampler=``. The shuffle is seeded with the seed of the latest
    ``seed_everything(seed)`` call (0 without one; see :func:`treadle.seed.requested_seed`), the same on
    every rank.

    Workers are seeded per rank (unless the loader has its own ``worker_init_fn``) when
    ``seed_everything(workers=True)`` asked for it, or when the data is split across processes, where workers
    of different ranks would otherwise draw the same augmentations.
    """
    seeder = _worker_seeder(loader, global_rank, split=sampler_kwargs is not None)
    if (
        sampler_kwargs is None
        or isinstance(_index_sampler(loader), DistributedSampler)
        or isinstance(loader.dataset, IterableDataset)
    ):
        # Nothing to split here (an iterable dataset must read its own share, see get_worker_info and the
        # rank). DataLoader allows worker_init_fn to change after construction.
        if seeder is not None:
            loader.worker_init_fn = seeder
        return loader
    _check_rebuildable(loader)
    batch_sampler = loader.batch_sampler  # a plain BatchSampler or None: _check_rebuildable made sure
    batch_size: int | None = loader.batch_size
    drop_last = False
    if isinstance(batch_sampler, BatchSampler):
        drop_last, batch_size = batch_sampler.drop_last, batch_sampler.batch_size
    seed = requested_seed()
    sampler: DistributedSampler[Any] = ResumableDistributedSampler(
        loader.dataset,
        shuffle=isinstance(_index_sampler(loader), RandomSampler),
        drop_last=drop_last,
        # The same seed on every rank, or the shuffled shares would overlap; a new seed, a new order. The
        # strategy sends rank 0's (in `sampler_kwargs`); this process's own is the fallback.
        **{"seed": 0 if seed is None else seed, **sampler_kwargs},
    )
    # Arguments that only newer torch releases have are passed only when the loader has them.
    newer = {name: getattr(loader, name) for name in ("in_order",) if hasattr(loader, name)}
    return DataLoader(
        loader.dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=drop_last,
        timeout=loader.timeout,
        worker_init_fn=seeder or loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
        **newer,
    )


def _check_rebuildable(loader: DataLoader[Any]) -> None:
    fix = "pass use_distributed_sampler=False to setup_dataloaders and give the loader a DistributedSampler yourself."
    if type(loader) is not DataLoader:
        raise TypeError(
            f"setup_dataloaders cannot rebuild a {type(loader).__name__} (a DataLoader subclass) with a "
            f"DistributedSampler without losing what the subclass adds. Instead, {fix}"
        )
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        raise TypeError(
            f"This DataLoader uses a custom batch sampler ({type(batch_sampler).__name__}), which treadle cannot "
            "split across processes. Partition the data in your batch sampler and pass "
            "use_distributed_sampler=False to setup_dataloaders."
        )
    sampler = _index_sampler(loader)
    if not isinstance(sampler, (RandomSampler, SequentialSampler)):
        where = "sampler" if sampler is loader.sampler else "sampler inside its BatchSampler"
        raise TypeError(
            f"This DataLoader uses a custom {where} ({type(sampler).__name__}), which treadle cannot split "
            "across processes. Wrap your sampler's indices per rank yourself and pass "
            "use_distributed_sampler=False to setup_dataloaders."
        )


def _index_sampler(loader: DataLoader[Any]) -> object:
    # The sampler that orders the indices. Given batch_sampler=BatchSampler(...), loader.sampler is a
    # SequentialSampler the DataLoader made up and never reads: the order (shuffled, weighted, ...) comes
    # from the sampler inside the batch sampler. With batch_size=, the two are the same object.
    batch_sampler = loader.batch_sampler
    if isinstance(batch_sampler, BatchSampler):
        return batch_sampler.sampler
    return loader.sampler


def _worker_seeder(loader: DataLoader[Any], global_rank: int, split: bool) -> WorkerSeeder | None:
    if loader.num_workers == 0 or loader.worker_init_fn is not None:
        return None
    requested = requested_worker_seed()
    if requested is None and not split:
        return None
    # Without a requested seed, derive one from torch's global RNG, so seed_everything(seed) still makes
    # worker seeds reproducible.
    base_seed = requested if requested is not None else int(torch.initial_seed() % (2**32))
    return make_worker_init_fn(base_seed, global_rank)


class FabricDataLoader(Generic[_D]):
    """A set-up dataloader: iterating yields batches already on the device.

    Each new iteration advances the sampler's epoch (``set_epoch``), so a DistributedSampler reshuffles.
    It is generic in the dataset's item type, as ``DataLoader`` is (batches are ``Any``, as there).
    """

    def __init__(self, dataloader: DataLoader[_D], device: torch.device | None) -> None:
        self._dataloader = dataloader
        self._device = device
        self._num_iter_calls = 0

    @property
    def dataloader(self) -> DataLoader[_D]:
        """The DataLoader being iterated (with a DistributedSampler put in, where one was needed)."""
        return self._dataloader

    @property
    def device(self) -> torch.device | None:
        """Where batches are moved, or None when they stay where the loader puts them (CPU)."""
        return self._device

    def __len__(self) -> int:
        return len(self._dataloader)

    def __iter__(self) -> Iterator[Any]:
        batch_sampler = getattr(self._dataloader, "batch_sampler", None)
        # The sampler inside a BatchSampler is the one that shuffles (a DistributedSampler the user put
        # there); DataLoader.sampler is then a plain SequentialSampler. Each object advances once.
        samplers = (
            getattr(self._dataloader, "sampler", None),
            batch_sampler,
            getattr(batch_sampler, "sampler", None),
        )
        for index, sampler in enumerate(samplers):
            if sampler is None or any(sampler is earlier for earlier in samplers[:index]):
                continue
            set_epoch = getattr(sampler, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self._num_iter_calls)
        self._num_iter_calls += 1
        if self._device is None:
            yield from self._dataloader
            return
        device = self._device
        for batch in self._dataloader:
            yield move_to_device(batch, device)

    if TYPE_CHECKING:
        # The DataLoader attributes read through the wrapper, typed; mypy flags any other name.
        dataset: Dataset[_D]
        batch_size: int | None
        drop_last: bool
        num_workers: int
        sampler: Sampler[Any] | Iterable[Any]
        batch_sampler: Sampler[Any] | Iterable[Any] | None
        collate_fn: Callable[[list[_D]], Any]
        pin_memory: bool
    else:

        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return getattr(self.__dict__["_dataloader"], name)

    def __repr__(self) -> str:
        return f"FabricDataLoader({self._dataloader!r}, device={self._device})"
