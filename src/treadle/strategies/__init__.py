"""Strategies and the parsing of ``strategy=``: a plain name -> factory table.

Distributed strategies are imported only when asked for, so ``import treadle`` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from treadle.strategies.base import REDUCE_OPS, ReduceOp, Strategy, parse_reduce_op
from treadle.strategies.environment import ProcessEnvironment, read_environment
from treadle.strategies.single_device import SingleDeviceStrategy

if TYPE_CHECKING:
    from treadle.strategies.ddp import DDPStrategy
    from treadle.strategies.fsdp import FSDPStrategy
    from treadle.strategies.model_parallel import ModelParallelStrategy
    from treadle.strategies.parallel import StartMethod

_DISTRIBUTED = {
    "DDPStrategy": "treadle.strategies.ddp",
    "FSDPStrategy": "treadle.strategies.fsdp",
    "ModelParallelStrategy": "treadle.strategies.model_parallel",
}


# Submodules reachable as attributes, as Lightning scripts write them (`strategies.fsdp.FSDPStrategy`).
_SUBMODULES = ("ddp", "fsdp", "model_parallel", "launch", "parallel", "fsdp_checkpoint")


def __getattr__(name: str) -> Any:
    # `from treadle.strategies import DDPStrategy` works without importing torch.distributed for everyone.
    if name in _SUBMODULES:
        return importlib.import_module(f"treadle.strategies.{name}")
    module = _DISTRIBUTED.get(name)
    if module is None:
        raise AttributeError(f"module 'treadle.strategies' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def _ddp() -> Strategy:
    from treadle.strategies.ddp import DDPStrategy

    return DDPStrategy()


def _ddp_spawn() -> Strategy:
    from treadle.strategies.ddp import DDPStrategy

    return DDPStrategy(start_method="spawn")


def _ddp_fork() -> Strategy:
    from treadle.strategies.ddp import DDPStrategy

    return DDPStrategy(start_method="fork")


def _fsdp() -> Strategy:
    from treadle.strategies.fsdp import FSDPStrategy

    return FSDPStrategy()


def _fsdp_cpu_offload() -> Strategy:
    from treadle.strategies.fsdp import FSDPStrategy

    return FSDPStrategy(cpu_offload=True)


def _find_unused(start_method: StartMethod) -> Callable[[], Strategy]:
    def make() -> Strategy:
        from treadle.strategies.ddp import DDPStrategy

        return DDPStrategy(find_unused_parameters=True, start_method=start_method)

    return make


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "single_device": SingleDeviceStrategy,
    "ddp": _ddp,
    "ddp_spawn": _ddp_spawn,
    "ddp_fork": _ddp_fork,
    "fsdp": _fsdp,
}

# Lightning Fabric's other names, accepted so its scripts run unchanged. Options belong in the strategy's
# arguments (DDPStrategy(find_unused_parameters=True)); these names only spell a few of them.
LIGHTNING_NAMES: dict[str, Callable[[], Strategy]] = {
    "ddp_notebook": _ddp_fork,
    "fsdp_cpu_offload": _fsdp_cpu_offload,
    "ddp_find_unused_parameters_false": _ddp,
    "ddp_find_unused_parameters_true": _find_unused("popen"),
    "ddp_spawn_find_unused_parameters_false": _ddp_spawn,
    "ddp_spawn_find_unused_parameters_true": _find_unused("spawn"),
    "ddp_fork_find_unused_parameters_false": _ddp_fork,
    "ddp_fork_find_unused_parameters_true": _find_unused("fork"),
    "ddp_notebook_find_unused_parameters_false": _ddp_fork,
    "ddp_notebook_find_unused_parameters_true": _find_unused("fork"),
}

# Names Lightning users may write for things treadle does not offer, with what to write instead.
NOT_OFFERED: dict[str, str] = {
    "dp": (
        "DataParallel (one process driving several GPUs) is not offered; PyTorch recommends DDP over it "
        "(faster, one process per device). Use strategy='ddp' with devices=N (or 'ddp_notebook' in a notebook)."
    ),
    "deepspeed": (
        "DeepSpeed is not offered. Use strategy='fsdp' (FSDP2) to shard parameters, gradients and optimizer "
        "state, or FSDPStrategy(cpu_offload=True) to offload them."
    ),
}

__all__ = [
    "LIGHTNING_NAMES",
    "NOT_OFFERED",
    "REDUCE_OPS",
    "STRATEGIES",
    "DDPStrategy",
    "FSDPStrategy",
    "ModelParallelStrategy",
    "ProcessEnvironment",
    "ReduceOp",
    "SingleDeviceStrategy",
    "Strategy",
    "parse_reduce_op",
    "parse_strategy",
    "read_environment",
]


def parse_strategy(strategy: str | Strategy, num_processes: int) -> Strategy:
    """Turn ``Fabric(strategy=...)`` into a Strategy; ``"auto"`` picks by how many processes the job has."""
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str) and strategy in NOT_OFFERED:
        raise ValueError(f"Fabric(strategy={strategy!r}): {NOT_OFFERED[strategy]}")
    if isinstance(strategy, str) and strategy in LIGHTNING_NAMES:
        return LIGHTNING_NAMES[strategy]()
    if not isinstance(strategy, str) or (strategy != "auto" and strategy not in STRATEGIES):
        choices = ", ".join(repr(name) for name in ["auto", *STRATEGIES])
        raise ValueError(
            f"Fabric(strategy={strategy!r}) is not a strategy. Choose one of: {choices}, "
            "or pass a Strategy instance such as DDPStrategy(find_unused_parameters=True)."
        )
    if strategy == "auto":
        strategy = "ddp" if num_processes > 1 else "single_device"
    return STRATEGIES[strategy]()
