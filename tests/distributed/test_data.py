"""prepare_dataloader in one process: what each rank's loader would read, without starting ranks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    WeightedRandomSampler,
)

from treadle import seed as seed_module
from treadle.data import prepare_dataloader
from treadle.seed import WorkerSeeder, seed_everything


@pytest.fixture(autouse=True)
def _forget_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare_dataloader reads the seeds recorded by seed_everything: start every test without one.
    monkeypatch.setattr(seed_module, "_seed", None)
    monkeypatch.setattr(seed_module, "_worker_seed", None)


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


def test_seed_everything_chooses_the_distributed_shuffle() -> None:
    def rank_zero_order() -> list[int]:
        loader = DataLoader(list(range(32)), batch_size=4, shuffle=True)
        prepared = prepare_dataloader(loader, {"num_replicas": 2, "rank": 0}, 0)
        return indices(prepared)

    def sampler_seed() -> int:
        loader = DataLoader(list(range(4)), shuffle=True)
        sampler = prepare_dataloader(loader, {"num_replicas": 2, "rank": 0}, 0).sampler
        assert isinstance(sampler, DistributedSampler)
        return sampler.seed

    assert sampler_seed() == 0  # no seed_everything yet
    seed_everything(1)
    first = rank_zero_order()
    seed_everything(2)
    assert rank_zero_order() != first
    seed_everything(1)
    assert rank_zero_order() == first and sampler_seed() == 1
    seed_everything(None)  # drawn per process: the ranks would disagree, so the shared default is kept
    assert sampler_seed() == 0


def test_a_plain_batch_sampler_keeps_its_shuffle_batch_size_and_drop_last() -> None:
    data = list(range(14))
    loaders = [
        prepare_dataloader(
            DataLoader(data, batch_sampler=BatchSampler(RandomSampler(data), batch_size=3, drop_last=True)),
            {"num_replicas": 2, "rank": rank},
            rank,
        )
        for rank in range(2)
    ]
    for loader in loaders:
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.shuffle
        assert loader.batch_size == 3 and loader.drop_last and len(loader) == 2  # 7 indices per rank
    first, second = (indices(loader) for loader in loaders)
    assert not set(first) & set(second)


def test_samplers_inside_a_batch_sampler_are_checked_like_samplers() -> None:
    data = list(range(8))
    weighted = WeightedRandomSampler([0.0] * 4 + [1.0] * 4, num_samples=8)
    loader = DataLoader(data, batch_sampler=BatchSampler(weighted, batch_size=2, drop_last=False))
    with pytest.raises(
        TypeError, match=r"custom sampler inside its BatchSampler \(WeightedRandomSampler\).*=False"
    ):
        prepare_dataloader(loader, {"num_replicas": 2, "rank": 0}, 0)
    # Already partitioned by the user: left as it is.
    split = BatchSampler(DistributedSampler(data, num_replicas=2, rank=0), batch_size=2, drop_last=False)
    partitioned = DataLoader(data, batch_sampler=split)
    assert prepare_dataloader(partitioned, {"num_replicas": 2, "rank": 0}, 0) is partitioned
