"""The one place that reads the launcher's environment (torchrun, SLURM, ``treadle run``): who this process is.

Every other module receives a :class:`ProcessEnvironment` or :class:`LaunchSettings` value instead of
looking at ``os.environ``. Processes that treadle starts itself get their variables through the ``env=``
of the child process (see :func:`rank_environment`); nothing here writes ``os.environ``.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from treadle.errors import caller_stacklevel

# `treadle run` hands its options to Fabric() in the children through these variables.
SETTING_VARIABLES: dict[str, str] = {
    "accelerator": "TREADLE_ACCELERATOR",
    "strategy": "TREADLE_STRATEGY",
    "devices": "TREADLE_DEVICES",
    "num_nodes": "TREADLE_NUM_NODES",
    "precision": "TREADLE_PRECISION",
}


@dataclass(frozen=True)
class ProcessEnvironment:
    """Where this process sits in a job, as its launcher described it.

    ``launched`` is True when a launcher (torchrun, ``treadle run``, SLURM with srun, or treadle's own
    process starter) already created every process of the job, so Fabric must not start any.
    ``launcher`` names it: ``"torchrun"`` (any launcher that sets ``RANK``/``WORLD_SIZE``), ``"slurm"``,
    ``"subprocess"`` (``fabric.launch()`` re-running the script) ``"spawn"`` (``strategy="ddp_spawn"``) or ``"fork"`` (``"ddp_fork"``, ``"ddp_notebook"``).
    """

    global_rank: int = 0
    local_rank: int = 0
    node_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    main_address: str = "127.0.0.1"
    main_port: int | None = None
    launched: bool = False
    launcher: str | None = None


@dataclass(frozen=True)
class LaunchSettings:
    """Fabric arguments given on the command line of ``treadle run`` (None: not given there)."""

    accelerator: str | None = None
    strategy: str | None = None
    devices: str | None = None
    num_nodes: int | None = None
    precision: str | None = None


def read_environment(environ: Mapping[str, str] | None = None) -> ProcessEnvironment:
    """Read rank and rendezvous information from ``environ`` (default: ``os.environ``).

    Args:
        environ: the variables to read; None reads this process's environment.

    Returns:
        The environment; ``launched`` is False when no launcher set this process up.

    Raises:
        RuntimeError: a variable the launcher set is not an integer.

    Example::

        env = read_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
        assert env.global_rank == 1 and env.launched
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, treadle run, treadle's own subprocess launcher
        world_size = _int(env, "WORLD_SIZE")
        local_world_size = _int(env, "LOCAL_WORLD_SIZE", default=world_size)
        return ProcessEnvironment(
            global_rank=_int(env, "RANK"),
            local_rank=_int(env, "LOCAL_RANK", default=0),
            node_rank=_int(env, "GROUP_RANK", default=_int(env, "NODE_RANK", default=0)),
            world_size=world_size,
            local_world_size=local_world_size,
            main_address=env.get("MASTER_ADDR", "127.0.0.1"),
            main_port=_main_port(env),
            launched=True,
            launcher=env.get("TREADLE_LAUNCHER", "torchrun"),
        )
    if (
        "SLURM_NTASKS" in env
        and "SLURM_PROCID" in env
        # Only srun starts one process per task; the batch script of an sbatch allocation is a single
        # process whose SLURM_NTASKS describes the allocation, and treating it as a job would hang at setup.
        and "SLURM_STEP_NUM_TASKS" in env
        and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")
    ):
        world_size = _int(env, "SLURM_NTASKS")
        nodes = _int(env, "SLURM_NNODES", default=1)
        return ProcessEnvironment(
            global_rank=_int(env, "SLURM_PROCID"),
            local_rank=_int(env, "SLURM_LOCALID", default=0),
            node_rank=_int(env, "SLURM_NODEID", default=0),
            world_size=world_size,
            local_world_size=max(world_size // max(nodes, 1), 1),
            main_address=env.get("MASTER_ADDR", _first_slurm_host(env.get("SLURM_NODELIST", "127.0.0.1"))),
            main_port=_main_port(env, default=_slurm_port(env)),
            launched=True,
            launcher="slurm",
        )
    return ProcessEnvironment()


def rank_environment(
    base: Mapping[str, str],
    *,
    global_rank: int,
    local_rank: int,
    world_size: int,
    local_world_size: int,
    main_address: str,
    main_port: int,
    launcher: str,
) -> dict[str, str]:
    """The environment of a child process that treadle starts as one rank: ``base`` plus its place in the job.

    The result is meant for ``subprocess.Popen(env=...)``; ``read_environment`` in the child reads it back.
    """
    env = dict(base)
    env.update(
        RANK=str(global_rank),
        LOCAL_RANK=str(local_rank),
        GROUP_RANK="0",
        NODE_RANK="0",
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(local_world_size),
        MASTER_ADDR=main_address,
        MASTER_PORT=str(main_port),
        TREADLE_LAUNCHER=launcher,
    )
    return env


def settings_environment(base: Mapping[str, str], settings: LaunchSettings) -> dict[str, str]:
    """``base`` plus the ``TREADLE_*`` variables that carry ``settings`` to ``Fabric()`` in the children."""
    env = dict(base)
    for field, variable in SETTING_VARIABLES.items():
        value = getattr(settings, field)
        if value is not None:
            env[variable] = str(value)
    return env


def read_launch_settings(environ: Mapping[str, str] | None = None) -> LaunchSettings:
    """The Fabric arguments that ``treadle run`` passed to this process (all None when it did not)."""
    env = os.environ if environ is None else environ
    num_nodes = env.get(SETTING_VARIABLES["num_nodes"])
    return LaunchSettings(
        accelerator=env.get(SETTING_VARIABLES["accelerator"]),
        strategy=env.get(SETTING_VARIABLES["strategy"]),
        devices=env.get(SETTING_VARIABLES["devices"]),
        num_nodes=None if num_nodes is None else _int(env, SETTING_VARIABLES["num_nodes"]),
        precision=env.get(SETTING_VARIABLES["precision"]),
    )


def apply_launch_settings(
    accelerator: Any,
    strategy: Any,
    devices: Any,
    num_nodes: int,
    precision: Any,
    environ: Mapping[str, str] | None = None,
) -> tuple[Any, Any, Any, int, Any]:
    """Fill Fabric's arguments that the code left at their defaults from the options of ``treadle run``.

    An argument the code sets wins over the command line. When both set it to different values, a
    ``UserWarning`` says so (on global rank 0 only, so N processes do not print it N times). An argument
    equal to Fabric's default counts as not set in the code.

    Args:
        accelerator, strategy, devices, num_nodes, precision: the values passed to ``Fabric()``.
        environ: the variables to read; None reads this process's environment.

    Returns:
        The five arguments, in the same order, with the launcher's values (strings, checked later by the
        same parsers as the code's values) filled in.

    Example::

        accelerator, strategy, devices, num_nodes, precision = apply_launch_settings(
            "auto", "auto", "auto", 1, "32-true", {"TREADLE_PRECISION": "bf16-mixed"}
        )
        assert precision == "bf16-mixed"
    """
    env = os.environ if environ is None else environ
    settings = read_launch_settings(env)
    is_rank_zero = read_environment(env).global_rank == 0
    defaults = _code_defaults()
    given: dict[str, Any] = {
        "accelerator": accelerator,
        "strategy": strategy,
        "devices": devices,
        "num_nodes": num_nodes,
        "precision": precision,
    }
    merged = dict(given)
    for name, code_value in given.items():
        cli_value = getattr(settings, name)
        if cli_value is None:
            continue
        if _is_default(code_value, defaults[name]):
            merged[name] = cli_value
        elif is_rank_zero and not _same_setting(name, code_value, cli_value):
            option = "--" + name.replace("_", "-")
            warnings.warn(
                f"Fabric({name}={code_value!r}) in the code differs from `treadle run {option} {cli_value}`; "
                "the value in the code wins. Remove one of the two to silence this warning.",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )
    return (
        merged["accelerator"],
        merged["strategy"],
        merged["devices"],
        int(merged["num_nodes"]),
        merged["precision"],
    )


def _code_defaults() -> dict[str, tuple[object, ...]]:
    # Read from Fabric's signature rather than restated here, so the two cannot drift apart. Imported here:
    # treadle.fabric imports this module.
    from treadle.fabric import Fabric

    parameters = inspect.signature(Fabric.__init__).parameters
    defaults: dict[str, tuple[object, ...]] = {
        name: (parameters[name].default,) for name in SETTING_VARIABLES
    }
    # Fabric(precision=None) also means "the default precision".
    defaults["precision"] += (None,)
    return defaults


def _is_default(value: object, defaults: tuple[object, ...]) -> bool:
    # Compared by type too: `True == 1`, but Fabric(num_nodes=True) is a mistake, not the default.
    return any(type(value) is type(default) and value == default for default in defaults)


def _same_setting(name: str, code_value: object, cli_value: object) -> bool:
    if name == "devices" and isinstance(code_value, Sequence) and not isinstance(code_value, str):
        code_value = len(code_value)
    # Strategy, Accelerator and Precision objects carry the name the command line would use.
    code_value = getattr(code_value, "name", code_value)
    return str(code_value).strip().lower() == str(cli_value).strip().lower()


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    value = env.get(key)
    if value is None:
        if default is None:
            raise RuntimeError(
                f"The launcher set no {key} environment variable; treadle needs it to place ranks."
            )
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(
            f"The environment variable {key}={value!r} is not an integer. Check how the job was launched."
        ) from None


def _main_port(env: Mapping[str, str], default: int | None = None) -> int | None:
    return _int(env, "MASTER_PORT") if "MASTER_PORT" in env else default


def _first_slurm_host(nodelist: str) -> str:
    # "node[01-04],other" -> "node01"; enough for the rendezvous host, which is always the first node.
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        first = rest.rstrip("]").split(",")[0].split("-")[0]
        return prefix + first
    return head


def _slurm_port(env: Mapping[str, str]) -> int:
    # Every task of a job must agree on the port without talking to each other: derive it from the job id,
    # so two jobs sharing a node are unlikely to collide.
    job_id = env.get("SLURM_JOB_ID", "0")
    digits = "".join(ch for ch in job_id if ch.isdigit())[-4:] or "0"
    return 15000 + int(digits)
