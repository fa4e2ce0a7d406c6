"""FSDP2 with two real processes on CPU (gloo): one job (jobs/job_fsdp.py), each test asserts one part."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.distributed.runner import run_job

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("fsdp")
    run_job("job_fsdp", str(out), timeout=90).check()
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def test_submodules_of_the_given_classes_are_sharded(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["blocks_sharded"] == ["FSDPBlock", "FSDPBlock"]
        assert seen["optimizer_retargeted"], "an optimizer made before setup must step the sharded parameters"


def test_training_equals_one_process_on_the_combined_batch(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["train_difference"] < 1e-6
        assert seen["norm_type"] == "Tensor" and seen["norm_difference"] < 1e-5


def test_no_backward_sync_accumulates_like_a_big_batch(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["accumulated_grad_difference"] < 1e-6


def test_sharded_checkpoint_round_trip(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["sharded_files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
        assert seen["sharded_restored"] == [True, True]
        assert seen["sharded_plain_values"] == [3, {"lr": 0.01}]


def test_failed_sharded_save_keeps_the_old_checkpoint(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["failed_save"] == "cannot be saved"
        assert seen["after_failed_save"] == [True]
        assert seen["leftovers"] == []


def test_full_checkpoint_round_trip(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        keys, first_optimizer_key, step = seen["full_keys"]
        assert keys == [
            "0.linear.bias",
            "0.linear.weight",
            "1.linear.bias",
            "1.linear.weight",
            "2.bias",
            "2.weight",
        ]
        assert first_optimizer_key == ["0.linear.bias"], "optimizer state is keyed by parameter name"
        assert step == 4
        assert seen["full_restored"] == [True, True, 4]


def test_a_single_process_checkpoint_loads_and_training_continues(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["single_loaded_difference"] == 0.0
        assert seen["continued_difference"] < 1e-6
