"""LearningRateMonitor: logs every optimizer's learning rates (and optionally momenta) as training runs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch

from treadle.callbacks.hooks import Callback
from treadle.wrappers import FabricOptimizer

__all__ = ["LearningRateMonitor"]

Interval = Literal["step", "epoch"]
_INTERVALS = ("step", "epoch")


class LearningRateMonitor(Callback):
    """Logs the learning rate of every parameter group of every optimizer to the loggers.

    Names: ``lr-<OptimizerClass>`` for the first parameter group, ``lr-<OptimizerClass>/pg<i>`` for group
    ``i`` (or ``lr-<OptimizerClass>/<name>`` when the group has a ``"name"`` key). A second optimizer of
    the same class is ``lr-<OptimizerClass>-1``, a third ``-2``, in the order they are first seen. Each
    ``on_fit_start`` (every ``Trainer.fit``) starts afresh, so a second fit's optimizers take the same names
    and the first fit's are no longer logged. With
    ``log_momentum``, ``momentum-...`` names carry ``momentum`` (SGD, RMSprop) or ``betas[0]`` (Adam family).

    With ``logging_interval="step"`` the rates are logged just before each optimizer step, so each value
    is the one that step used. With ``"epoch"`` they are logged once per epoch, at its start.

    Where the values go: in the Trainer, to ``trainer.log_dict`` (so they reach the loggers and
    ``trainer.callback_metrics``). In a Fabric-only loop, to ``fabric.log_dict`` with the optimizer's own
    step count as the step; the monitor finds the optimizers itself, because every optimizer returned by
    ``fabric.setup`` fires ``on_before_optimizer_step``. Register the monitor when you create the Fabric,
    so that it also sees ``on_after_setup`` (which tells it which Fabric to log to). For the ``"epoch"``
    interval, fire ``on_train_epoch_start`` yourself; the values are logged at the epoch's first step.

    Args:
        logging_interval: ``"step"`` or ``"epoch"``.
        log_momentum: also log each group's momentum (or first beta).

    Raises:
        ValueError: ``logging_interval`` is not ``"step"`` or ``"epoch"``.

    Example::

        fabric = Fabric(loggers=CSVLogger("logs"), callbacks=[LearningRateMonitor()])
        model, optimizer = fabric.setup(model, optimizer)
        for batch in loader:
            fabric.backward(model(batch).mean())
            optimizer.step()  # logs lr-AdamW (and lr-AdamW/pg1, ...) before stepping
            optimizer.zero_grad()
            scheduler.step()
    """

    def __init__(self, logging_interval: Interval = "step", log_momentum: bool = False) -> None:
        if logging_interval not in _INTERVALS:
            raise ValueError(
                f"LearningRateMonitor(logging_interval={logging_interval!r}) is not a choice. Choose one of: "
                f"{', '.join(map(repr, _INTERVALS))}."
            )
        if not isinstance(log_momentum, bool):
            raise TypeError(f"LearningRateMonitor(log_momentum={log_momentum!r}) must be True or False.")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self._fabric: Any = None
        self._trainer: Any = None
        self._optimizers: list[torch.optim.Optimizer] = []
        self._names: dict[int, str] = {}  # id(optimizer) -> e.g. "AdamW-1"
        self._steps: dict[int, int] = {}  # id(optimizer) -> optimizer steps seen (for Fabric-only loops)
        self._epoch_pending = False
        self.last_logged: dict[str, float] = {}
        """The values of the latest log call."""

    # --- hooks -------------------------------------------------------------------------------------------
    def on_after_setup(self, fabric: Any = None) -> None:
        if fabric is not None:
            self._fabric = fabric

    def on_fit_start(self, trainer: Any = None, fabric: Any = None) -> None:
        # A new fit (even by the same Trainer) brings new optimizers: forget the old ones, so the new ones
        # get the first names again and the dead ones are not logged at the next epoch start.
        self._optimizers, self._names, self._steps = [], {}, {}
        self._epoch_pending = False
        self._trainer = None
        self._attach(trainer, fabric)

    def on_train_start(self, trainer: Any = None, fabric: Any = None) -> None:
        self._attach(trainer, fabric)

    def on_train_epoch_start(self, trainer: Any = None, fabric: Any = None) -> None:
        if self.logging_interval != "epoch":
            return
        self._attach(trainer, fabric)
        if self._trainer is not None:
            self._log(self._optimizers, step=None)
        else:
            self._epoch_pending = True  # a Fabric-only loop: the optimizers show up at their first step

    def on_before_optimizer_step(
        self, optimizer: Any = None, trainer: Any = None, fabric: Any = None
    ) -> None:
        if optimizer is None:
            return
        self._attach(trainer, fabric)
        optimizer = _unwrap(optimizer)
        self._discover([optimizer])
        if self.logging_interval == "step":
            self._log([optimizer], step=self._steps[id(optimizer)])
        elif self._epoch_pending:
            self._epoch_pending = False
            self._log(self._optimizers, step=self._steps[id(optimizer)])
        self._steps[id(optimizer)] += 1

    # --- internals ---------------------------------------------------------------------------------------
    def _attach(self, trainer: Any, fabric: Any) -> None:
        if fabric is not None:
            self._fabric = fabric
        if trainer is not None and trainer is not self._trainer:
            self._trainer = trainer
            self._discover(_unwrap(opt) for opt in getattr(trainer, "optimizers", ()) or ())

    def _discover(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        for optimizer in optimizers:
            if id(optimizer) in self._names:
                continue
            class_name = type(optimizer).__name__
            same_class = sum(1 for known in self._optimizers if type(known).__name__ == class_name)
            self._names[id(optimizer)] = class_name if same_class == 0 else f"{class_name}-{same_class}"
            self._steps[id(optimizer)] = 0
            self._optimizers.append(optimizer)

    def _log(self, optimizers: Iterable[torch.optim.Optimizer], step: int | None) -> None:
        metrics: dict[str, float] = {}
        for optimizer in optimizers:
            metrics.update(self._values(optimizer))
        if not metrics:
            return
        self.last_logged = metrics
        if self._trainer is not None:
            self._trainer.log_dict(metrics)
        elif self._fabric is not None:
            self._fabric.log_dict(metrics, step=step)
        else:
            raise RuntimeError(
                "LearningRateMonitor has nowhere to log: it saw neither a Trainer nor a Fabric. Register it "
                "when you create the Fabric, e.g. Fabric(callbacks=[LearningRateMonitor()]), so that "
                "fabric.setup(...) introduces them."
            )

    def _values(self, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        base = self._names[id(optimizer)]
        values: dict[str, float] = {}
        for index, group in enumerate(optimizer.param_groups):
            suffix = f"/{group['name']}" if "name" in group else (f"/pg{index}" if index else "")
            values[f"lr-{base}{suffix}"] = float(group["lr"])
            if self.log_momentum:
                momentum = _momentum(group)
                if momentum is not None:
                    values[f"momentum-{base}{suffix}"] = momentum
        return values


def _unwrap(optimizer: Any) -> Any:
    return optimizer.optimizer if isinstance(optimizer, FabricOptimizer) else optimizer


def _momentum(group: dict[str, Any]) -> float | None:
    if "momentum" in group:
        return float(group["momentum"])
    betas = group.get("betas")
    if isinstance(betas, (tuple, list)) and betas:
        return float(betas[0])
    return None
