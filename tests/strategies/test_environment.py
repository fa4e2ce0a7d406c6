"""Reading the launcher's environment, and `treadle run` settings reaching Fabric() (no processes)."""

from __future__ import annotations

import inspect
import warnings

import pytest

from treadle.strategies.environment import (
    LaunchSettings,
    ProcessEnvironment,
    apply_launch_settings,
    rank_environment,
    read_environment,
    read_launch_settings,
    settings_environment,
)

DEFAULTS = ("auto", "auto", "auto", 1, "32-true")


def test_nothing_set_means_one_unlaunched_process() -> None:
    assert read_environment({}) == ProcessEnvironment()


def test_torchrun_variables() -> None:
    env = read_environment(
        {
            "RANK": "5",
            "LOCAL_RANK": "1",
            "WORLD_SIZE": "8",
            "LOCAL_WORLD_SIZE": "4",
            "GROUP_RANK": "1",
            "MASTER_ADDR": "10.0.0.1",
            "MASTER_PORT": "29500",
        }
    )
    assert env == ProcessEnvironment(5, 1, 1, 8, 4, "10.0.0.1", 29500, launched=True, launcher="torchrun")


def test_slurm_variables_and_a_port_derived_from_the_job() -> None:
    env = read_environment(
        {
            "SLURM_NTASKS": "4",
            "SLURM_PROCID": "3",
            "SLURM_LOCALID": "1",
            "SLURM_NODEID": "1",
            "SLURM_NNODES": "2",
            "SLURM_NODELIST": "gpu[07-08]",
            "SLURM_JOB_ID": "123456",
            "SLURM_JOB_NAME": "train",
            "SLURM_STEP_NUM_TASKS": "4",
        }
    )
    assert (env.global_rank, env.local_rank, env.node_rank, env.world_size, env.local_world_size) == (
        3,
        1,
        1,
        4,
        2,
    )
    assert env.main_address == "gpu07"
    assert env.main_port == 15000 + 3456
    assert env.launcher == "slurm"


def test_interactive_slurm_allocation_is_not_a_launch() -> None:
    assert not read_environment({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "bash"}).launched


def test_the_batch_script_of_an_sbatch_allocation_is_not_a_launch() -> None:
    # 4 tasks allocated, but no srun step: this is the one batch process, which must not wait for 3 others.
    batch = {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "9"}
    assert not read_environment(batch).launched
    assert read_environment({**batch, "SLURM_STEP_NUM_TASKS": "4"}).launched


def test_a_non_integer_variable_is_reported() -> None:
    with pytest.raises(RuntimeError, match=r"RANK='x' is not an integer"):
        read_environment({"RANK": "x", "WORLD_SIZE": "2"})


def test_rank_environment_reads_back() -> None:
    env = rank_environment(
        {"PATH": "/bin"},
        global_rank=1,
        local_rank=1,
        world_size=2,
        local_world_size=2,
        main_address="127.0.0.1",
        main_port=1234,
        launcher="subprocess",
    )
    assert env["PATH"] == "/bin"
    assert read_environment(env) == ProcessEnvironment(1, 1, 0, 2, 2, "127.0.0.1", 1234, True, "subprocess")


def test_settings_round_trip_through_the_environment() -> None:
    settings = LaunchSettings(
        accelerator="cpu", strategy="ddp", devices="2", num_nodes=1, precision="bf16-mixed"
    )
    env = settings_environment({}, settings)
    assert env == {
        "TREADLE_ACCELERATOR": "cpu",
        "TREADLE_STRATEGY": "ddp",
        "TREADLE_DEVICES": "2",
        "TREADLE_NUM_NODES": "1",
        "TREADLE_PRECISION": "bf16-mixed",
    }
    assert read_launch_settings(env) == settings
    assert settings_environment({}, LaunchSettings()) == {}


def test_launch_settings_fill_arguments_left_at_their_defaults() -> None:
    env = settings_environment({}, LaunchSettings("cpu", "ddp", "2", 2, "bf16-mixed"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_launch_settings(*DEFAULTS, environ=env) == ("cpu", "ddp", "2", 2, "bf16-mixed")
        assert apply_launch_settings("auto", "auto", "auto", 1, None, environ=env)[4] == "bf16-mixed"
        # Without settings nothing changes.
        assert apply_launch_settings(*DEFAULTS, environ={}) == DEFAULTS


def test_code_wins_over_the_command_line_with_a_warning_on_rank_zero() -> None:
    env = settings_environment({"RANK": "0"}, LaunchSettings(precision="bf16-mixed"))
    with pytest.warns(
        UserWarning, match=r"Fabric\(precision='16-mixed'\).*--precision bf16-mixed.*code wins"
    ):
        merged = apply_launch_settings("auto", "auto", "auto", 1, "16-mixed", environ=env)
    assert merged[4] == "16-mixed"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Rank 1 of a launched job (RANK without WORLD_SIZE is no launch, so it would count as rank 0).
        rank_one = {**env, "RANK": "1", "WORLD_SIZE": "2"}
        apply_launch_settings("auto", "auto", "auto", 1, "16-mixed", environ=rank_one)


def test_equal_values_do_not_warn() -> None:
    env = settings_environment({}, LaunchSettings(devices="2", strategy="ddp"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_launch_settings("auto", "ddp", [0, 1], 1, "32-true", environ=env)[1:3] == ("ddp", [0, 1])
        assert apply_launch_settings("auto", "DDP", 2, 1, "32-true", environ=env)[2] == 2


def test_objects_compare_by_name() -> None:
    from treadle.strategies.ddp import DDPStrategy

    env = settings_environment({}, LaunchSettings(strategy="ddp"))
    strategy = DDPStrategy(find_unused_parameters=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_launch_settings("auto", strategy, "auto", 1, "32-true", environ=env)[1] is strategy


def test_the_conflict_warning_points_at_the_callers_line() -> None:
    env = settings_environment({}, LaunchSettings(precision="bf16-mixed"))
    with pytest.warns(UserWarning, match="code wins") as caught:
        apply_launch_settings("auto", "auto", "auto", 1, "16-mixed", environ=env)
    assert caught[0].filename == __file__


def test_the_conflict_warning_points_at_the_line_that_creates_fabric() -> None:
    from treadle import Fabric

    env = settings_environment({}, LaunchSettings(precision="bf16-mixed"))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.warns(UserWarning, match="code wins") as caught:
            Fabric(accelerator="cpu", devices=1, precision="64-true")
    assert caught[0].filename == __file__


def test_the_slurm_rank_decides_who_warns() -> None:
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_JOB_NAME": "train",
    }
    env = settings_environment(slurm, LaunchSettings(precision="bf16-mixed"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_launch_settings("auto", "auto", "auto", 1, "16-mixed", environ=env)
    with pytest.warns(UserWarning, match="code wins"):
        apply_launch_settings("auto", "auto", "auto", 1, "16-mixed", environ={**env, "SLURM_PROCID": "0"})


def test_fabrics_own_defaults_give_way_to_the_command_line() -> None:
    from treadle import Fabric

    parameters = inspect.signature(Fabric.__init__).parameters
    names = ("accelerator", "strategy", "devices", "num_nodes", "precision")
    assert tuple(parameters[name].default for name in names) == DEFAULTS
    env = settings_environment({}, LaunchSettings("cpu", "ddp", "2", 2, "bf16-mixed"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_launch_settings(*DEFAULTS, environ=env) == ("cpu", "ddp", "2", 2, "bf16-mixed")
    # A value that is not Fabric's default is the code's choice: it stays, with a warning.
    with pytest.warns(UserWarning, match=r"Fabric\(num_nodes=3\).*--num-nodes 2"):
        assert apply_launch_settings(*DEFAULTS[:3], 3, "32-true", environ=env)[3] == 3


def test_the_port_comes_from_master_port_for_both_launchers() -> None:
    torchrun = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "1234"}
    slurm = {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "MASTER_PORT": "1234"}
    assert read_environment(torchrun).main_port == read_environment(slurm).main_port == 1234
    assert read_environment({"RANK": "0", "WORLD_SIZE": "1"}).main_port is None
    with pytest.raises(RuntimeError, match="MASTER_PORT='x'"):
        read_environment({**slurm, "MASTER_PORT": "x"})


def test_distributed_strategies_import_from_the_package() -> None:
    from treadle.strategies import DDPStrategy, FSDPStrategy
    from treadle.strategies.ddp import DDPStrategy as Direct

    assert DDPStrategy is Direct and FSDPStrategy.__name__ == "FSDPStrategy"
