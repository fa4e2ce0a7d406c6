"""How ``fit`` and ``validate`` begin and end: the model joins the callbacks, and every ending is reported.

Where the model joins: after the user's callbacks, so its own hook methods see what they did, and before
the callbacks that declare ``trainer_order`` 1 (those that judge the epoch, e.g. EarlyStopping) and 2
(those that save everyone's state, e.g. ModelCheckpoint). So a metric the model logs in its own
``on_train_epoch_end`` can be monitored, and a checkpoint holds every callback's state after its update.
"""

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
    """Register ``model`` as a callback for the block: after the user's callbacks, before those that run late.

    Callbacks with a class attribute ``trainer_order`` of 1 or 2 are moved behind the model (in that order,
    keeping their given order otherwise) for the block, and stay after the others when it ends.

    On any exception, KeyboardInterrupt included, ``call("on_exception", exception=...)`` reaches every
    callback (and the model) before the exception propagates unchanged. In every case the loggers are
    finalized on global rank 0 with ``"success"``, ``"failed"`` or ``"interrupted"`` (a KeyboardInterrupt, or
    ``interrupted()`` true at the end, as after SIGTERM).

    Example::

        with model_as_last_callback(fabric, model, call, interrupted=lambda: False):
            run_the_loop()
    """
    if any(callback is model for callback in fabric.callbacks):
        raise ValueError(
            "The model is also in Trainer(callbacks=...). The Trainer calls the model's own hook methods by "
            "itself, after your callbacks: leave the model out of callbacks."
        )
    late = sorted(
        (callback for callback in fabric.callbacks if _order(callback) > 0), key=_order
    )  # sorted() is stable: callbacks of one order keep the order they were given in
    for callback in late:
        fabric.remove_callback(callback)
    fabric.add_callback(model)
    for callback in late:
        fabric.add_callback(callback)
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


def _order(callback: object) -> int:
    order = getattr(type(callback), "trainer_order", 0)
    if type(order) is not int or order not in (0, 1, 2):
        name = type(callback).__qualname__
        raise ValueError(
            f"{name}.trainer_order = {order!r}: it must be 0 (with your callbacks, before the model), 1 (after "
            f"the model, e.g. EarlyStopping) or 2 (last, e.g. ModelCheckpoint). Set it on the class, e.g. "
            f"`trainer_order = 1`."
        )
    return order
