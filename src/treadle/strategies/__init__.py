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

_DISTRIBUTED = {"DDPStrategy": "treadle.strategies.ddp", "FSDPStrategy": "treadle.strategies.fsdp"}


def __getattr__(name: str) -> Any:
    # `from treadle.strategies import DDPStrategy` works without importing torch.distributed for everyone.
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


def _fsdp() -> Strategy:
    from treadle.strategies.fsdp import FSDPStrategy

    return FSDPStrategy()


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "single_device": SingleDeviceStrategy,
    "ddp": _ddp,
    "ddp_spawn": _ddp_spawn,
    "fsdp": _fsdp,
}

__all__ = [
    "REDUCE_OPS",
    "STRATEGIES",
    "DDPStrategy",
    "FSDPStrategy",
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
    if not isinstance(strategy, str) or (strategy != "auto" and strategy not in STRATEGIES):
        choices = ", ".join(repr(name) for name in ["auto", *STRATEGIES])
        raise ValueError(
            f"Fabric(strategy={strategy!r}) is not a strategy. Choose one of: {choices}, "
            "or pass a Strategy instance such as DDPStrategy(find_unused_parameters=True)."
        )
    if strategy == "auto":
        strategy = "ddp" if num_processes > 1 else "single_device"
    return STRATEGIES[strategy]()
