"""Run a function, warn or log on the process with global rank 0 only.

The rank is read when the function is called: the process group's rank once torch.distributed is
initialised (``fabric.launch()`` and every strategy do that first), else the launcher's ``RANK``/SLURM
variables, else 0. So a module-level ``@rank_zero_only`` function is right in every rank whichever way the
job was started.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch.distributed as dist

from treadle.callbacks.hooks import RANK_ZERO_ONLY_MARK
from treadle.errors import caller_stacklevel
from treadle.strategies.environment import read_environment

__all__ = ["global_rank", "rank_zero_debug", "rank_zero_info", "rank_zero_only", "rank_zero_warn"]

_F = TypeVar("_F", bound=Callable[..., Any])
log = logging.getLogger("treadle")


def global_rank() -> int:
    """This process's global rank: the process group's if one exists, else the launcher's, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return read_environment().global_rank


def rank_zero_only(fn: _F) -> _F:
    """Make `fn` run on global rank 0 only; elsewhere a call does nothing and returns None.

    Also works on a callback's hook method: the dispatcher then skips it on other ranks without calling it
    (as with ``treadle.rank_zero_only``).

    Raises:
        TypeError: `fn` is not callable.

    Example::

        @rank_zero_only
        def report(metrics):
            print(metrics)
    """
    if not callable(fn):
        raise TypeError(f"@rank_zero_only decorates a function, got {fn!r} ({type(fn).__name__}).")

    @functools.wraps(fn)
    def on_rank_zero(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if global_rank() == 0 else None

    setattr(on_rank_zero, RANK_ZERO_ONLY_MARK, True)
    return cast(_F, on_rank_zero)


def rank_zero_warn(message: str | Warning, category: type[Warning] = UserWarning, **kwargs: Any) -> None:
    """``warnings.warn(message, category)`` on global rank 0 only, attributed to the caller's line.

    Example::

        rank_zero_warn("validation_step is missing: skipping validation")
    """
    if global_rank() == 0:
        kwargs.setdefault("stacklevel", caller_stacklevel())
        warnings.warn(message, category, **kwargs)


def rank_zero_info(message: str, *args: Any, **kwargs: Any) -> None:
    """``logging.getLogger("treadle").info(message, *args)`` on global rank 0 only."""
    if global_rank() == 0:
        log.info(message, *args, **kwargs)


def rank_zero_debug(message: str, *args: Any, **kwargs: Any) -> None:
    """``logging.getLogger("treadle").debug(message, *args)`` on global rank 0 only."""
    if global_rank() == 0:
        log.debug(message, *args, **kwargs)
