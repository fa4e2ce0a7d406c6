"""DDP with two real processes on gloo: one job (jobs/job_ddp.py) runs every check, each test asserts one part."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.distributed.runner import Finished, run_job

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Finished, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("ddp")
    finished = run_job("job_ddp", str(out)).check()
    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    return finished, ranks


@pytest.fixture
def ranks(job: tuple[Finished, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return job[1]


def test_fabric_launch_started_two_ranks(ranks: list[dict[str, Any]]) -> None:
    assert [seen["rank"] for seen in ranks] == [0, 1]
    assert all(seen["world_size"] == 2 for seen in ranks)


def test_gradients_equal_one_process_on_the_combined_batch(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["grad_difference"] < 1e-6
        assert seen["params_identical_across_ranks"]


def test_no_backward_sync_accumulates_like_a_big_batch(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["unsynced_grads_differ"], "inside no_backward_sync the ranks must not have synchronised"
        assert seen["accumulated_grad_difference"] < 1e-6


def test_all_reduce_each_op(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["all_reduce"] == {"sum": 3.0, "mean": 1.5, "max": 2.0, "min": 1.0}
        assert seen["all_reduce_int_mean"] == 1.5
        assert seen["all_reduce_number"] == 3
        assert seen["all_reduce_nested"] == 3.0
        assert seen["input_untouched"]
        assert seen["group"] == [1.5, [1.0, 2.0]]


def test_broadcast_from_a_chosen_rank(ranks: list[dict[str, Any]]) -> None:
    assert [seen["broadcast"] for seen in ranks] == [{"from": 1, "items": [1]}] * 2


def test_all_gather_nested_and_with_gradients(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["all_gather_nested"] == {"a": [[0, 0], [1, 1]], "b": [0.0, 10.0]}
    # loss = sum of everything gathered, on both ranks: each rank's input gets (rank + 1) * world_size.
    assert [seen["sync_grads"] for seen in ranks] == [[2.0, 2.0], [4.0, 4.0]]


def test_all_reduce_bool_and_rank_zero_first(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["any"] == [True, False]
        assert seen["all"] == [False, True]
        assert seen["rank_zero_was_first"]


def test_print_only_on_rank_zero(job: tuple[Finished, list[dict[str, Any]]]) -> None:
    assert job[0].stdout.count("PRINTED-ONCE") == 1


def test_sampler_partitions_without_overlap_and_reshuffles(ranks: list[dict[str, Any]]) -> None:
    assert all(seen["sampler"] == "ResumableDistributedSampler" and seen["batch_size"] == 2 for seen in ranks)
    for epoch in range(2):
        parts = [seen["epochs"][epoch] for seen in ranks]
        assert sorted(parts[0] + parts[1]) == list(range(10))
        assert not set(parts[0]) & set(parts[1])
    assert any(seen["epochs"][0] != seen["epochs"][1] for seen in ranks), "set_epoch must reshuffle"
    # drop_last is kept: 11 items, 2 ranks, batch 2 -> each rank drops its odd item.
    assert [seen["drop_last"] for seen in ranks] == [[True, [0, 2, 4, 6]], [True, [1, 3, 5, 7]]]


def test_ranks_seeded_apart_still_read_disjoint_shares(ranks: list[dict[str, Any]]) -> None:
    first, second = (seen["seeded_apart"] for seen in ranks)
    assert sorted(first + second) == list(range(40))
    assert first != sorted(first)  # shuffled


def test_use_distributed_sampler_false_leaves_the_loader_alone(ranks: list[dict[str, Any]]) -> None:
    assert [seen["not_distributed"] for seen in ranks] == [[0, 1, 2, 3, 4, 5]] * 2


def test_save_on_rank_zero_and_load_everywhere(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["loaded_equal"]
        assert seen["loaded_step"] == 5
        assert not [name for name in seen["files_after_save"] if name.startswith(".")], "no temporary files"


def test_a_failed_save_fails_on_every_rank_and_replaces_nothing(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["failed_save"] == "cannot be saved"
    assert "Rank 0 failed to write the checkpoint" in ranks[1]["failed_save"]
    for seen in ranks:
        unchanged, files = seen["after_failed_save"]
        assert unchanged
        assert not [name for name in files if name.startswith(".")]


def test_rank_zero_only_callbacks_run_on_rank_zero_only(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["callbacks"] == [["every rank", "rank zero only"], 1]
    assert ranks[1]["callbacks"] == [["every rank"], 0]


def test_job_left_no_traceback(job: tuple[Finished, list[dict[str, Any]]]) -> None:
    assert "Traceback" not in job[0].stderr
