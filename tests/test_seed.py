from __future__ import annotations

import io
import os
import pickle
import random
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from treadle import seed as seed_module
from treadle.seed import (
    WorkerSeeder,
    capture_rng_state,
    make_worker_init_fn,
    requested_seed,
    requested_worker_seed,
    restore_rng_state,
    seed_everything,
    worker_init_fn,
)


@pytest.fixture(autouse=True)
def _keep_global_rngs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # These tests reseed process-wide generators; give other tests back the state they had.
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    monkeypatch.setattr(seed_module, "_worker_seed", None)
    monkeypatch.setattr(seed_module, "_seed", None)
    yield
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


class WorkerDraws(Dataset[torch.Tensor]):
    """Each item records which worker produced it and one draw from each library."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> torch.Tensor:
        info = get_worker_info()
        worker = info.id if info is not None else -1
        draws = [float(worker), torch.rand(()).item(), random.random(), float(np.random.rand())]
        return torch.tensor(draws, dtype=torch.float64)


def _run_loader(
    init: Any, seed: int = 7, workers: bool = False, num_workers: int = 2, **kwargs: Any
) -> torch.Tensor:
    # The DataLoader draws its per-iterator seed from torch's global generator, so seed it first.
    seed_everything(seed, workers=workers)
    loader = DataLoader(
        WorkerDraws(), batch_size=None, num_workers=num_workers, worker_init_fn=init, **kwargs
    )
    return torch.stack(list(loader))


def test_same_seed_gives_same_draws() -> None:
    assert seed_everything(123) == 123
    first = _draws()
    seed_everything(123)
    assert _draws() == first
    seed_everything(124)
    second = _draws()
    assert all(a != b for a, b in zip(second, first, strict=True))


def test_no_seed_draws_one_and_returns_it() -> None:
    chosen = seed_everything()
    assert 0 <= chosen <= 2**32 - 1
    first = _draws()
    seed_everything(chosen)
    assert _draws() == first
    assert len({seed_everything() for _ in range(3)}) > 1


def test_numpy_integer_seed_is_accepted() -> None:
    assert seed_everything(np.int64(5)) == 5  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (-1, ValueError, "between 0 and 4294967295, got -1"),
        (2**32, ValueError, "got 4294967296"),
        (1.5, TypeError, "must be an int, got float 1.5"),
        ("42", TypeError, r"int\('42'\)"),
        (True, TypeError, "got the bool True"),
    ],
)
def test_bad_seed_is_rejected(bad: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        seed_everything(bad)


def test_bad_workers_flag_is_rejected() -> None:
    with pytest.raises(TypeError, match="workers='yes'"):
        seed_everything(1, workers="yes")  # type: ignore[arg-type]


def test_environment_is_left_alone() -> None:
    before = dict(os.environ)
    seed_everything(1, workers=True)
    seed_everything(None)
    assert dict(os.environ) == before


def test_workers_request_is_recorded() -> None:
    assert requested_worker_seed() is None
    seed_everything(9, workers=True)
    assert requested_worker_seed() == 9
    seed_everything(9)
    assert requested_worker_seed() is None


def test_the_requested_seed_is_recorded_but_not_a_drawn_one() -> None:
    assert requested_seed() is None
    seed_everything(5)
    assert requested_seed() == 5
    seed_everything(6, workers=True)
    assert requested_seed() == 6
    seed_everything(None)  # each process draws its own: nothing a sampler shared across ranks could use
    assert requested_seed() is None


def test_works_without_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    with_numpy = capture_rng_state()
    monkeypatch.setitem(sys.modules, "numpy", None)  # makes `import numpy` raise ImportError
    assert seed_everything(3) == 3
    first = torch.rand(2)
    seed_everything(3)
    assert torch.equal(torch.rand(2), first)
    state = capture_rng_state()
    assert "numpy" not in state
    restore_rng_state(with_numpy)  # a snapshot with numpy restores the rest


def test_worker_seeds_are_reproducible_and_distinct_per_worker_and_rank() -> None:
    rank0 = _run_loader(make_worker_init_fn(7, global_rank=0))
    again = _run_loader(make_worker_init_fn(7, global_rank=0))
    rank1 = _run_loader(make_worker_init_fn(7, global_rank=1))
    other_base = _run_loader(make_worker_init_fn(8, global_rank=0))

    assert torch.equal(rank0, again)
    first_of_worker = {int(row[0]): row[1:] for row in reversed(rank0)}
    assert set(first_of_worker) == {0, 1}
    # Every library's draw differs between the two workers, between ranks and between base seeds.
    assert (first_of_worker[0] != first_of_worker[1]).all()
    assert (rank0[:, 1:] != rank1[:, 1:]).all()
    assert (rank0[:, 1:] != other_base[:, 1:]).all()


def test_worker_seeds_change_between_epochs_but_repeat_with_the_run() -> None:
    seed_everything(7)
    loader = DataLoader(
        WorkerDraws(), batch_size=None, num_workers=2, worker_init_fn=make_worker_init_fn(7, 0)
    )
    epochs = [torch.stack(list(loader)) for _ in range(2)]
    assert (epochs[0][:, 1:] != epochs[1][:, 1:]).all()
    seed_everything(7)
    assert torch.equal(torch.stack(list(loader)), epochs[0])


def test_module_worker_init_fn_uses_recorded_seed() -> None:
    plain = _run_loader(worker_init_fn, seed=7, workers=True)
    assert torch.equal(plain, _run_loader(make_worker_init_fn(7, global_rank=0)))


def test_worker_init_fn_pickles_for_spawn() -> None:
    seeder = make_worker_init_fn(3, global_rank=1)
    copy = pickle.loads(pickle.dumps(seeder))
    assert isinstance(copy, WorkerSeeder)
    assert repr(copy) == "WorkerSeeder(base_seed=3, global_rank=1)"
    seeder(0)
    expected = _draws()
    copy(0)
    assert _draws() == expected
    with pytest.raises(ValueError, match="global_rank must be a non-negative int, got -1"):
        make_worker_init_fn(3, global_rank=-1)


def test_worker_seeding_with_spawned_workers() -> None:
    init = make_worker_init_fn(7, global_rank=1)
    spawned = _run_loader(init, num_workers=1, multiprocessing_context="spawn")
    forked = _run_loader(init, num_workers=1, multiprocessing_context="fork")
    assert torch.equal(spawned, forked)


def test_capture_restore_repeats_draws_after_weights_only_round_trip() -> None:
    seed_everything(11)
    random.gauss(0, 1)  # leaves a cached gaussian in both generators' state
    np.random.randn()
    state = capture_rng_state()
    assert state["python"]["gauss_next"] is not None
    assert state["numpy"]["has_gauss"] == 1
    expected = (random.gauss(0, 1), float(np.random.randn()), *_draws())

    buffer = io.BytesIO()
    torch.save({"rng": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["rng"]
    _draws()
    restore_rng_state(loaded)

    assert (random.gauss(0, 1), float(np.random.randn()), *_draws()) == expected


def test_restore_tolerates_missing_keys() -> None:
    seed_everything(5)
    state = capture_rng_state()
    expected_torch = torch.rand(2)
    python_draw = random.random()

    restore_rng_state({})
    restore_rng_state({"torch": state["torch"]})
    assert torch.equal(torch.rand(2), expected_torch)
    assert random.random() != python_draw  # python's generator was not in the partial state


def test_restore_rejects_foreign_state() -> None:
    with pytest.raises(TypeError, match="takes the dict capture_rng_state"):
        restore_rng_state([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="did not write"):
        restore_rng_state({"python": {"version": 3}})


@pytest.mark.gpu
def test_cuda_rng_state_round_trips() -> None:
    torch.cuda.init()
    seed_everything(13)
    torch.rand(4, device="cuda")
    state = capture_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(4, device="cuda")

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restore_rng_state(torch.load(buffer, weights_only=True))
    assert torch.equal(torch.rand(4, device="cuda"), expected)
