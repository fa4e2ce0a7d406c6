"""The one place that reads the launcher's environment (torchrun, SLURM): who this process is."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessEnvironment:
    """Where this process sits in a job, as its launcher described it.

    ``launched`` is True when a launcher (torchrun, ``treadle run``, SLURM with srun, or treadle's own
    process starter) already created every process of the job, so Fabric must not start any.
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


def read_environment(environ: Mapping[str, str] | None = None) -> ProcessEnvironment:
    """Read rank and rendezvous information from ``environ`` (default: ``os.environ``)."""
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
            main_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else None,
            launched=True,
            launcher=env.get("TREADLE_LAUNCHER", "torchrun"),
        )
    if (
        "SLURM_NTASKS" in env
        and "SLURM_PROCID" in env
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
            main_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else None,
            launched=True,
            launcher="slurm",
        )
    return ProcessEnvironment()


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


def _first_slurm_host(nodelist: str) -> str:
    # "node[01-04],other" -> "node01"; enough for the rendezvous host, which is always the first node.
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        first = rest.rstrip("]").split(",")[0].split("-")[0]
        return prefix + first
    return head
