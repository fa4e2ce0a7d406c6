"""How ``fit`` and ``validate`` begin and end: the model joins the callbacks, and every ending is reported."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from treadle.errors import add_note
from treadle.fabric import Fabric

__all__ = ["model_as_last_callback"]


@contextmanager
def model_as_last_callback(
    fabric: Fabric, model: nn.Module, call: Callable[..., Any], interrupted: Callable[[], bool]
) -> Iterator[None]:
    """Register ``model`` as the last callback for the block, so its own hook methods run after the user's.

    On any exception, KeyboardInterrupt included, ``call("on_exception", exception=...)`` reaches every
    callback (and the model) before the exception propagates unchanged. In every case the loggers are
    finalized on global rank 0 with ``"success"``, ``"failed"`` or ``"interrupted"`` (a KeyboardInterrupt, or
    ``interrupted()`` true at the end, as after SIGTERM).

    Example::

        with model_as_last_callback(fabric, model, call, interrupted=lambda: False):
            run_the_loop()
    """
    fabric.add_callback(model)
    status = "success"
    try:
        yield
        if interrupted():
            status = "interrupted"
    except BaseException as exception:
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        try:
            call("on_exception", exception=exception)
        except BaseException as hook_error:
            add_note(exception, f"While handling it, on_exception raised {hook_error!r}.")
        raise
    finally:
        fabric.remove_callback(model)
        if fabric.is_global_zero:
            for logger in fabric.loggers:
                logger.finalize(status)
