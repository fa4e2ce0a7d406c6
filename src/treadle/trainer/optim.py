"""Reading what a model's ``configure_optimizers()`` returns into one optimizer and its schedulers."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from treadle.trainer.state import Interval, SchedulerConfig

__all__ = ["parse_optimizer_config", "step_schedulers"]

_FORMS = (
    "Return one of: an optimizer; (optimizer, scheduler); or "
    "{'optimizer': optimizer, 'lr_scheduler': scheduler_or_config} where a config is "
    "{'scheduler': scheduler, 'interval': 'step' | 'epoch', 'frequency': 1, 'monitor': 'val_loss'}."
)


def parse_optimizer_config(returned: Any) -> tuple[torch.optim.Optimizer, list[SchedulerConfig]]:
    """Split ``configure_optimizers()``'s result into the optimizer and validated scheduler configs.

    Args:
        returned: an optimizer; a pair ``(optimizer, scheduler)`` whose scheduler may be a config dict or a
            list of schedulers; or a dict with ``"optimizer"`` and optionally ``"lr_scheduler"`` (a scheduler,
            a config dict, or a list of them) and ``"monitor"`` (the default for ``ReduceLROnPlateau``).

    Returns:
        The optimizer and the list of scheduler configs (empty without schedulers).

    Raises:
        TypeError: the value has none of these forms.
        ValueError: a dict has unknown keys, or a scheduler entry is invalid.

    Example::

        optimizer, schedulers = parse_optimizer_config(model.configure_optimizers())
    """
    monitor = None
    if isinstance(returned, torch.optim.Optimizer):
        return returned, []
    if isinstance(returned, Mapping):
        unknown = [key for key in returned if key not in ("optimizer", "lr_scheduler", "monitor")]
        if unknown or "optimizer" not in returned:
            problem = f"has unknown keys {unknown}" if unknown else "has no 'optimizer'"
            raise ValueError(f"configure_optimizers() returned a dict that {problem}. {_FORMS}")
        optimizer, schedulers, monitor = (
            returned["optimizer"],
            returned.get("lr_scheduler"),
            returned.get("monitor"),
        )
    elif isinstance(returned, (tuple, list)) and len(returned) == 2:
        optimizer, schedulers = returned
    else:
        raise TypeError(f"configure_optimizers() returned {_describe(returned)}. {_FORMS}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"configure_optimizers() returned {_describe(optimizer)} where the optimizer goes. {_FORMS}"
        )
    if schedulers is None:
        return optimizer, []
    entries = schedulers if isinstance(schedulers, (list, tuple)) else [schedulers]
    configs = [SchedulerConfig.parse(entry, monitor=monitor) for entry in entries]
    for config in configs:
        bound = getattr(config.scheduler, "optimizer", optimizer)
        if bound is not optimizer:
            raise ValueError(
                f"configure_optimizers(): the scheduler {config.name} was built on a different optimizer than "
                "the one returned. Build it on the returned optimizer."
            )
    return optimizer, configs


def step_schedulers(
    configs: Sequence[SchedulerConfig],
    interval: Interval,
    count: int,
    metrics: Mapping[str, float],
    quiet_order_warning: bool = False,
) -> None:
    """Step the schedulers of ``interval`` that are due at the ``count``-th step or epoch.

    ``ReduceLROnPlateau`` steps with ``metrics[config.monitor]``.

    Raises:
        RuntimeError: a monitored metric is missing and its config is strict (otherwise: a warning).
    """
    for config in configs:
        if config.interval != interval or count % config.frequency:
            continue
        arguments: tuple[float, ...] = ()
        if config.needs_metric:
            assert config.monitor is not None
            value = metrics.get(config.monitor)
            if value is None:
                message = (
                    f"Scheduler {config.name} monitors {config.monitor!r}, which has not been logged (logged: "
                    f"{sorted(metrics) or 'nothing'}). Log it, or fix 'monitor'."
                )
                if config.strict:
                    raise RuntimeError(message + " Set 'strict': False to skip the step instead.")
                warnings.warn(message + " This scheduler step is skipped.", UserWarning, stacklevel=3)
                continue
            arguments = (value,)
        if not quiet_order_warning:
            config.scheduler.step(*arguments)
            continue
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=re.escape("Detected call of `lr_scheduler.step()` before")
            )
            config.scheduler.step(*arguments)


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"
