"""DDPStrategy options, names, validation against the launcher, and one in-process rank (no extra processes)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from treadle import Fabric
from treadle.strategies import SingleDeviceStrategy, parse_strategy
from treadle.strategies.ddp import DDPStrategy
from treadle.strategies.fsdp import FSDPStrategy


def fake_torchrun(monkeypatch: pytest.MonkeyPatch, rank: int, world_size: int, local_world_size: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank % local_world_size))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world_size))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29511")


def test_names_map_to_strategies() -> None:
    ddp = parse_strategy("ddp", 2)
    spawn = parse_strategy("ddp_spawn", 2)
    assert isinstance(ddp, DDPStrategy) and ddp.start_method == "popen"
    assert isinstance(spawn, DDPStrategy) and spawn.start_method == "spawn"
    assert isinstance(parse_strategy("fsdp", 2), FSDPStrategy)
    assert isinstance(parse_strategy("auto", 2), DDPStrategy)
    assert isinstance(parse_strategy("auto", 1), SingleDeviceStrategy)


@pytest.mark.parametrize(
    ("name", "start_method", "find_unused"),
    [
        ("ddp_fork", "fork", False),
        ("ddp_notebook", "fork", False),
        ("ddp_find_unused_parameters_true", "popen", True),
        ("ddp_find_unused_parameters_false", "popen", False),
        ("ddp_spawn_find_unused_parameters_true", "spawn", True),
        ("ddp_notebook_find_unused_parameters_true", "fork", True),
    ],
)
def test_lightning_strategy_names_are_accepted(name: str, start_method: str, find_unused: bool) -> None:
    strategy = parse_strategy(name, 2)
    assert isinstance(strategy, DDPStrategy)
    assert strategy.start_method == start_method
    assert strategy.find_unused_parameters is find_unused


def test_fsdp_cpu_offload_name() -> None:
    strategy = parse_strategy("fsdp_cpu_offload", 2)
    assert isinstance(strategy, FSDPStrategy) and strategy.cpu_offload


@pytest.mark.parametrize(("name", "advice"), [("dp", r"strategy='ddp' with devices=N"), ("deepspeed", "'fsdp'")])
def test_strategies_treadle_does_not_offer_say_what_to_use(name: str, advice: str) -> None:
    with pytest.raises(ValueError, match=rf"Fabric\(strategy='{name}'\): .*not offered.*{advice}"):
        Fabric(accelerator="cpu", strategy=name)


def test_options_and_repr() -> None:
    strategy = DDPStrategy(find_unused_parameters=True, bucket_cap_mb=10, timeout=timedelta(seconds=5))
    assert strategy.ddp_kwargs == {"bucket_cap_mb": 10}
    assert repr(strategy) == (
        "DDPStrategy(find_unused_parameters=True, bucket_cap_mb=10, timeout=datetime.timedelta(seconds=5))"
    )
    assert repr(DDPStrategy(start_method="spawn")) == "DDPStrategy(start_method='spawn')"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"find_unused_parameters": "yes"},
            TypeError,
            r"DDPStrategy\(find_unused_parameters='yes'\) must be True or False",
        ),
        ({"static_graph": 1}, TypeError, r"static_graph=1"),
        ({"timeout": 30}, ValueError, r"timeout=30\) must be a positive datetime.timedelta"),
        ({"timeout": timedelta(0)}, ValueError, r"must be a positive"),
        (
            {"start_method": "forkserver"},
            ValueError,
            r"start_method='forkserver'\) is not a start method. Choose 'popen'",
        ),
        ({"process_group_backend": ""}, ValueError, r"process_group_backend=''"),
        ({"bucket_size": 3}, TypeError, r"bucket_size.*DistributedDataParallel does not take.*bucket_cap_mb"),
        ({"device_ids": [0]}, TypeError, r"device_ids"),
        ({"hang_timeout": 0}, ValueError, r"hang_timeout=0\) must be a positive timedelta.*'auto'.*None"),
        ({"hang_timeout": "soon"}, ValueError, r"hang_timeout='soon'"),
    ],
)
def test_invalid_options_are_named(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        DDPStrategy(**kwargs)  # type: ignore[arg-type]


def test_hang_timeout_defaults_to_most_of_the_process_group_timeout() -> None:
    assert DDPStrategy(timeout=timedelta(minutes=10)).hang_timeout == 540.0
    assert DDPStrategy(hang_timeout=timedelta(seconds=90)).hang_timeout == 90.0
    assert DDPStrategy(hang_timeout=5).hang_timeout == 5.0 and DDPStrategy(hang_timeout=None).hang_timeout is None


def test_before_launch_the_job_size_is_planned_and_setup_asks_for_launch() -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    assert fabric.world_size == 2 and fabric.global_rank == 0 and not fabric.strategy.launched
    with pytest.raises(RuntimeError, match=r"fabric.launch\(\)"):
        fabric.setup(torch.nn.Linear(1, 1))
    with pytest.raises(RuntimeError, match=r"fabric.launch\(\)"):
        fabric.barrier()


def test_spawn_needs_a_function() -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    with pytest.raises(RuntimeError, match=r"fabric.launch\(train, \*args\)"):
        fabric.launch()


def test_several_nodes_need_a_launcher() -> None:
    fabric = Fabric(accelerator="cpu", devices=2, num_nodes=2, strategy="ddp")
    with pytest.raises(RuntimeError, match=r"num_nodes=2\) cannot start processes on other machines"):
        fabric.launch()


def test_devices_must_match_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torchrun(monkeypatch, rank=1, world_size=2, local_world_size=2)
    with pytest.raises(ValueError, match=r"asks for 3 process\(es\) per machine, but the launcher started 2"):
        Fabric(accelerator="cpu", devices=3, strategy="ddp")


def test_num_nodes_must_match_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torchrun(monkeypatch, rank=3, world_size=4, local_world_size=2)
    with pytest.raises(
        ValueError, match=r"Fabric\(num_nodes=1\) does not match the launcher: WORLD_SIZE=4 .* 2 machine"
    ):
        Fabric(accelerator="cpu")
    fabric = Fabric(accelerator="cpu", num_nodes=2)
    assert (fabric.global_rank, fabric.local_rank, fabric.world_size) == (3, 1, 4)
    assert isinstance(fabric.strategy, DDPStrategy) and fabric.strategy.launched


def test_single_device_refuses_a_multi_process_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torchrun(monkeypatch, rank=0, world_size=2, local_world_size=2)
    with pytest.raises(
        ValueError, match=r"strategy='single_device'\) runs a single process, but the launcher started 2"
    ):
        Fabric(accelerator="cpu", strategy="single_device")


def test_fabric_takes_treadle_run_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TREADLE_PRECISION", "bf16-mixed")
    monkeypatch.setenv("TREADLE_ACCELERATOR", "cpu")
    assert Fabric().precision.name == "bf16-mixed"
    with pytest.warns(UserWarning, match=r"the value in the code wins"):
        assert Fabric(precision="16-true").precision.name == "16-true"


def test_one_rank_in_process_joins_a_group_and_collectives_work() -> None:
    fabric = Fabric(accelerator="cpu", devices=1, strategy=DDPStrategy(timeout=timedelta(seconds=20)))
    assert fabric.strategy.launched
    assert fabric.launch(lambda f, x: x * 2, 21) == 42
    assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"
    model, _ = fabric.setup(torch.nn.Linear(2, 2), torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1))
    assert isinstance(model._forward_module, DistributedDataParallel)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    assert not isinstance(fabric.setup(frozen)._forward_module, DistributedDataParallel)
    assert fabric.all_gather(torch.tensor([1, 2])).tolist() == [[1, 2]]
    assert fabric.all_gather(torch.tensor(True)).tolist() == [True]
    assert fabric.all_reduce(torch.tensor([True, False]), reduce_op="sum").tolist() == [1, 0]
    assert fabric.broadcast({"a": 1}) == {"a": 1}
    assert fabric.all_reduce_bool(True, "all") is True
    with pytest.raises(ValueError, match=r"src=1\) must be a rank between 0 and 0"):
        fabric.broadcast(1, src=1)
    fabric.strategy.teardown()
    assert not torch.distributed.is_initialized()


def test_an_existing_process_group_is_reused() -> None:
    from treadle.strategies.launch import find_free_port

    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{find_free_port()}", rank=0, world_size=1
    )
    fabric = Fabric(accelerator="cpu", strategy="ddp")
    fabric.launch()
    assert fabric.all_reduce(torch.tensor(3.0), reduce_op="max").item() == 3.0
    fabric.strategy.teardown()
    assert torch.distributed.is_initialized(), "a group the user made is the user's to destroy"
