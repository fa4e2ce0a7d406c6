"""prepare_dataloader in one process: what each rank's loader would read, without starting ranks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, Sampler

from treadle.data import prepare_dataloader
from treadle.seed import WorkerSeeder, seed_everything


def indices(loader: DataLoader[Any]) -> list[int]:
    return [int(i) for batch in loader for i in batch]


def test_ranks_read_disjoint_shares_and_keep_batch_size() -> None:
    loaders = [
        prepare_dataloader(
            DataLoader(list(range(12)), batch_size=3, shuffle=True), {"num_replicas": 2, "rank": r}, r
        )
        for r in range(2)
    ]
    for loader in loaders:
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.shuffle
        assert loader.batch_size == 3
    first, second = (indices(loader) for loader in loaders)
    assert sorted(first + second) == list(range(12))
    loaders[0].sampler.set_epoch(1)  # type: ignore[attr-defined]
    assert indices(loaders[0]) != first


def test_no_sampler_kwargs_or_an_existing_distributed_sampler_leave_the_loader() -> None:
    loader = DataLoader(list(range(4)))
    assert prepare_dataloader(loader, None, 0) is loader
    sampled = DataLoader(list(range(4)), sampler=DistributedSampler(list(range(4)), num_replicas=2, rank=0))
    assert prepare_dataloader(sampled, {"num_replicas": 2, "rank": 0}, 0) is sampled


def test_iterable_datasets_are_left_alone() -> None:
    class Stream(IterableDataset[int]):
        def __iter__(self) -> Any:
            return iter(range(3))

    loader = DataLoader(Stream())
    assert prepare_dataloader(loader, {"num_replicas": 2, "rank": 1}, 1) is loader


def test_custom_samplers_are_refused_with_the_way_out() -> None:
    class Evens(Sampler[int]):
        def __iter__(self) -> Any:
            return iter(range(0, 4, 2))

        def __len__(self) -> int:
            return 2

    with pytest.raises(TypeError, match=r"custom sampler \(Evens\).*use_distributed_sampler=False"):
        prepare_dataloader(DataLoader(list(range(4)), sampler=Evens()), {"num_replicas": 2, "rank": 0}, 0)


def test_workers_get_a_per_rank_seed() -> None:
    seed_everything(7, workers=True)
    loader = DataLoader(list(range(4)), num_workers=1)
    prepared = prepare_dataloader(loader, {"num_replicas": 2, "rank": 1}, 1)
    assert isinstance(prepared.worker_init_fn, WorkerSeeder)
    assert (prepared.worker_init_fn.base_seed, prepared.worker_init_fn.global_rank) == (7, 1)
    seed_everything(7)
    torch.manual_seed(11)
    unseeded = prepare_dataloader(
        DataLoader(list(range(4)), num_workers=1), {"num_replicas": 2, "rank": 0}, 0
    )
    assert unseeded.worker_init_fn.base_seed == 11  # type: ignore[union-attr]


def test_iterable_datasets_get_per_rank_worker_seeds_too() -> None:
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset[int]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from range(4)

    seed_everything(7, workers=True)
    prepared = prepare_dataloader(DataLoader(Stream(), num_workers=1), {"num_replicas": 2, "rank": 1}, 1)
    assert isinstance(prepared.worker_init_fn, WorkerSeeder) and prepared.worker_init_fn.global_rank == 1


def test_rebuilt_loader_keeps_in_order_and_subclasses_are_refused() -> None:
    loader = DataLoader(list(range(8)), batch_size=2, num_workers=1, in_order=False)
    prepared = prepare_dataloader(loader, {"num_replicas": 2, "rank": 0}, 0)
    assert prepared.in_order is False

    class MyLoader(DataLoader[int]):
        pass

    with pytest.raises(TypeError, match=r"cannot rebuild a MyLoader.*use_distributed_sampler=False"):
        prepare_dataloader(MyLoader(list(range(4))), {"num_replicas": 2, "rank": 0}, 0)
