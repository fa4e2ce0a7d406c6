"""Dataloaders across processes: each rank reads its own share (DistributedSampler), workers seeded per rank."""

from __future__ import annotations

from typing import Any

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)


def prepare_dataloader(
    loader: DataLoader[Any], sampler_kwargs: dict[str, int] | None, global_rank: int
) -> DataLoader[Any]:
    """Return ``loader`` rebuilt with a DistributedSampler when ``sampler_kwargs`` asks for partitioning.

    ``sampler_kwargs`` holds ``num_replicas`` and ``rank``; None (one process, or the user opted out) keeps
    the loader. Shuffling, ``drop_last`` and the batch size are kept. After ``seed_everything(workers=True)``,
    a loader with workers and no ``worker_init_fn`` gets one that seeds each worker per rank.
    """
    if sampler_kwargs is None or isinstance(loader.sampler, DistributedSampler):
        _seed_workers(loader, global_rank)
        return loader
    if isinstance(loader.dataset, IterableDataset):
        # An iterable dataset has no indices to split; it must read its own share (see get_worker_info and
        # the rank), as torch's own DistributedSampler cannot help either.
        return loader
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        raise TypeError(
            f"This DataLoader uses a custom batch sampler ({type(batch_sampler).__name__}), which treadle cannot "
            "split across processes. Partition the data in your batch sampler and pass "
            "use_distributed_sampler=False to setup_dataloaders."
        )
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        raise TypeError(
            f"This DataLoader uses a custom sampler ({type(loader.sampler).__name__}), which treadle cannot split "
            "across processes. Wrap your sampler's indices per rank yourself and pass "
            "use_distributed_sampler=False to setup_dataloaders."
        )
    shuffle = isinstance(loader.sampler, RandomSampler)
    drop_last = bool(batch_sampler.drop_last) if batch_sampler is not None else False
    batch_size = batch_sampler.batch_size if batch_sampler is not None else loader.batch_size
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset,
        shuffle=shuffle,
        drop_last=drop_last,
        **sampler_kwargs,
    )
    worker_init_fn = loader.worker_init_fn
    if worker_init_fn is None and loader.num_workers > 0:
        from treadle.seed import make_worker_init_fn

        worker_init_fn = make_worker_init_fn(_base_seed(), global_rank)
    return DataLoader(
        loader.dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=drop_last,
        timeout=loader.timeout,
        worker_init_fn=worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
    )


def _base_seed() -> int:
    import torch

    from treadle.seed import requested_worker_seed

    requested = requested_worker_seed()
    if requested is not None:
        return requested
    # Derived from torch's global RNG, so seed_everything(seed) makes worker seeds reproducible.
    return int(torch.initial_seed() % (2**32))


def _seed_workers(loader: DataLoader[Any], global_rank: int) -> None:
    from treadle.seed import make_worker_init_fn, requested_worker_seed

    seed = requested_worker_seed()
    if seed is not None and loader.num_workers > 0 and loader.worker_init_fn is None:
        # DataLoader allows this attribute to change after construction; rebuilding the loader would lose
        # settings of subclasses.
        loader.worker_init_fn = make_worker_init_fn(seed, global_rank)
