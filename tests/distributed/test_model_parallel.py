"""ModelParallelStrategy with two real processes on CPU (gloo), and its checkpoints read by other layouts.

Two jobs (jobs/job_model_parallel.py): tensor parallel x2, then data parallel x2 (FSDP2) starting from the
tensor-parallel job's sharded checkpoint. Here, in one process, both folders load into a plain model.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.distributed.jobs.job_model_parallel import Transformer
from tests.distributed.runner import SRC, run_job
from treadle import Fabric

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model_parallel")
    (out / "tp").mkdir()
    (out / "dp").mkdir()
    run_job("job_model_parallel", "tp", str(out / "tp"), timeout=90).check()
    run_job("job_model_parallel", "dp", str(out / "dp"), str(out / "tp" / "sharded"), timeout=90).check()
    (out / "fsdp").mkdir()
    run_job("job_model_parallel", "fsdp", str(out / "fsdp"), str(out / "tp" / "sharded"), timeout=90).check()
    return out


def seen(jobs: Path, mode: str) -> list[dict[str, Any]]:
    return [torch.load(jobs / mode / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.mark.parametrize(("mode", "shape"), [("tp", (1, 2)), ("dp", (2, 1))])
def test_the_mesh_and_a_meta_model_split_and_initialised(
    jobs: Path, mode: str, shape: tuple[int, int]
) -> None:
    for rank in seen(jobs, mode):
        assert rank["mesh"] == [("data_parallel", "tensor_parallel"), shape]
        assert rank["meta_before_setup"] and rank["materialized"]
        split = rank["dtensor_parameters"]
        assert "blocks.0.attention.wq.weight" in split and "blocks.1.w2.weight" in split
        # Tensor parallel splits only the planned layers; FSDP2 shards every parameter.
        assert ("embedding.weight" in split) == (mode == "dp")
        assert rank["start_difference"] == 0.0, "a one-process file loads into the split model"


@pytest.mark.parametrize("mode", ["tp", "dp", "fsdp"])
def test_training_follows_the_unsplit_model(jobs: Path, mode: str) -> None:
    for rank in seen(jobs, mode):
        assert max(rank["loss_differences"]) < 1e-5, rank["loss_differences"]
        assert max(rank["norm_differences"]) < 1e-5, "clip_gradients returns the norm of the whole model"
        assert rank["train_difference"] < 1e-5
        assert rank["accumulated_grad_difference"] < 1e-6


def test_data_is_split_over_data_parallel_ranks_only(jobs: Path) -> None:
    tp, dp = seen(jobs, "tp"), seen(jobs, "dp")
    assert tp[0]["samples"] == tp[1]["samples"] == list(range(16)), "a tensor-parallel group reads the same"
    assert sorted(dp[0]["samples"] + dp[1]["samples"]) == list(range(16))
    assert not set(dp[0]["samples"]) & set(dp[1]["samples"])


@pytest.mark.parametrize("mode", ["tp", "dp"])
def test_sharded_checkpoint_round_trip(jobs: Path, mode: str) -> None:
    for rank in seen(jobs, mode):
        assert rank["sharded_round_trip"] == [True, 4]
    assert sorted(p.name for p in (jobs / mode / "sharded").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    ]


@pytest.mark.parametrize("mode", ["tp", "dp"])
def test_a_background_sharded_save_holds_the_state_of_its_call(jobs: Path, mode: str) -> None:
    for rank in seen(jobs, mode):
        assert rank["background_round_trip"] == [True, 5]
        assert rank["leftovers"] == [], "no staging folder is left"


@pytest.mark.parametrize("mode", ["dp", "fsdp"])
def test_a_tensor_parallel_checkpoint_loads_into_a_data_parallel_job(jobs: Path, mode: str) -> None:
    for rank in seen(jobs, mode):
        assert rank["resharded_difference"] == 0.0
        assert rank["resharded_moment_difference"] == 0.0, "the optimizer state follows the new layout"


@pytest.mark.parametrize(
    "source", ["tp/sharded", "dp/sharded", "fsdp/sharded", "tp/full.pt", "dp/full.pt", "fsdp/full.pt"]
)
def test_any_layout_loads_into_one_process_and_training_goes_on(jobs: Path, source: str) -> None:
    mode = source.split("/")[0]
    weights = torch.load(jobs / mode / "weights.pt", weights_only=True)
    moments = torch.load(jobs / mode / "moments.pt", weights_only=True)
    fabric = Fabric(accelerator="cpu", devices=1)
    model = Transformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model, optimizer = fabric.setup(model, optimizer)
    state: dict[str, Any] = {"model": model, "optimizer": optimizer}
    if source.endswith("sharded"):
        state["step"] = 0
    assert (jobs / source).is_dir() == source.endswith("sharded")
    fabric.load(jobs / source, state)
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    for name, parameter in model.named_parameters():
        assert torch.equal(optimizer.state[parameter]["exp_avg"], moments[name]), name
    assert state.get("step", 4) == 4
    loss = model(torch.zeros(2, 8, dtype=torch.long)).sum()
    fabric.backward(loss)
    optimizer.step()  # the restored state steps like any other


def test_consolidate_writes_one_file_torch_load_reads(jobs: Path, tmp_path: Path) -> None:
    output = tmp_path / "consolidated.pt"
    command = [sys.executable, "-m", "treadle", "consolidate", str(jobs / "tp" / "sharded"), str(output)]
    done = subprocess.run(command, capture_output=True, text=True, env={"PYTHONPATH": str(SRC)}, check=False)
    assert done.returncode == 0, done.stderr
    assert "checkpoint written to" in done.stdout
    saved = torch.load(output, weights_only=True)
    weights = torch.load(jobs / "tp" / "weights.pt", weights_only=True)
    assert saved["step"] == 4 and set(saved) == {"model", "optimizer", "step"}
    assert all(torch.equal(saved["model"][name], value) for name, value in weights.items())
    # ... and it loads back into a model-free single process, optimizer included.
    model = Transformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    Fabric(accelerator="cpu").load(output, {"model": model, "optimizer": optimizer})
    assert torch.equal(model.head.weight, weights["head.weight"])
    assert len(optimizer.state) == len(list(model.parameters()))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left"
