"""configure_optimizers' three return forms, scheduler configs, and when schedulers step."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tests.trainer.models import Classifier, loader, trainer
from treadle.trainer.optim import parse_optimizer_config
from treadle.trainer.state import Progress, SchedulerConfig


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)


def test_three_return_forms() -> None:
    optimizer = _optimizer()
    assert parse_optimizer_config(optimizer) == (optimizer, [])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    parsed, configs = parse_optimizer_config((optimizer, scheduler))
    assert parsed is optimizer and configs[0].scheduler is scheduler and configs[0].interval == "epoch"
    parsed, configs = parse_optimizer_config(
        {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 3}}
    )
    assert (configs[0].interval, configs[0].frequency, configs[0].name) == ("step", 3, "StepLR")
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    _, configs = parse_optimizer_config(
        {"optimizer": optimizer, "lr_scheduler": plateau, "monitor": "val_loss"}
    )
    assert configs[0].monitor == "val_loss" and configs[0].needs_metric


@pytest.mark.parametrize(
    ("returned", "error", "match"),
    [
        (None, TypeError, "returned a NoneType"),
        ((1, 2, 3), TypeError, "a tuple of 3 items"),
        ({"optimizer": 1}, TypeError, "where the optimizer goes"),
        ({"optim": 1}, ValueError, r"unknown keys \['optim'\]"),
        ({"lr_scheduler": 1}, ValueError, "has no 'optimizer'"),
    ],
)
def test_wrong_forms_are_explained(returned: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_optimizer_config(returned)


def test_scheduler_config_is_validated() -> None:
    optimizer = _optimizer()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    with pytest.raises(ValueError, match="'interval'='batch' must be 'step' or 'epoch'"):
        SchedulerConfig.parse({"scheduler": scheduler, "interval": "batch"})
    with pytest.raises(ValueError, match="'frequency'=0"):
        SchedulerConfig.parse({"scheduler": scheduler, "frequency": 0})
    with pytest.raises(ValueError, match=r"unknown keys \['every'\]"):
        SchedulerConfig.parse({"scheduler": scheduler, "every": 2})
    with pytest.raises(ValueError, match="has no 'scheduler'"):
        SchedulerConfig.parse({"interval": "step"})
    with pytest.raises(TypeError, match="step\\(\\) method"):
        SchedulerConfig.parse(object())
    with pytest.raises(ValueError, match="ReduceLROnPlateau needs the metric"):
        SchedulerConfig.parse(torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer))
    other = torch.optim.lr_scheduler.StepLR(_optimizer(), step_size=1)
    with pytest.raises(ValueError, match="different optimizer"):
        parse_optimizer_config((optimizer, other))


def test_progress_round_trip_and_validation() -> None:
    progress = Progress(epoch=2, global_step=150, batches_done=10, time_elapsed=3.5)
    assert Progress.from_state_dict(progress.state_dict()) == progress
    with pytest.raises(ValueError, match="global_step=-1"):
        Progress(global_step=-1)
    with pytest.raises(ValueError, match="expected"):
        Progress.from_state_dict({"epoch": 1})
    older = progress.state_dict()
    del older["step_boundary_pending"]  # checkpoints written before the field existed still load
    assert Progress.from_state_dict(older) == progress
    with pytest.raises(ValueError, match="step_boundary_pending='yes'"):
        Progress(step_boundary_pending="yes")  # type: ignore[arg-type]


def _lrs_per_step(configure: Any, **options: Any) -> list[float]:
    lrs: list[float] = []

    class Watch:
        def on_train_batch_end(self, trainer: Any) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer(callbacks=[Watch()], **options).fit(Classifier(configure=configure), loader(n=32))
    return lrs


def test_step_and_epoch_intervals_with_frequency() -> None:
    def per_step(model: nn.Module) -> Any:
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: 0.5**n)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 2},
        }

    # 4 batches per epoch; the scheduler halves the lr after every second optimizer step.
    assert _lrs_per_step(per_step, max_epochs=2) == [1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.0625]

    def per_epoch(model: nn.Module) -> Any:
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)

    lrs = _lrs_per_step(per_epoch, max_epochs=2, grad_accum_steps=2)
    assert lrs == pytest.approx([1.0] * 4 + [0.1] * 4)


def test_reduce_on_plateau_reads_the_monitored_metric() -> None:
    class Flat(Classifier):
        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            return torch.tensor(1.0)  # val_loss never improves

    def configure(model: nn.Module) -> Any:
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}

    fitted = trainer(max_epochs=3)
    fitted.fit(Flat(configure=configure), loader(n=16), loader(n=16))
    assert fitted.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.25)


def test_missing_monitor_raises_or_warns() -> None:
    def configure(strict: bool) -> Any:
        def build(model: nn.Module) -> Any:
            optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": plateau, "monitor": "nope", "strict": strict},
            }

        return build

    with pytest.raises(RuntimeError, match="monitors 'nope', which has not been logged"):
        trainer().fit(Classifier(configure=configure(True)), loader(n=16))
    with pytest.warns(UserWarning, match="step is skipped"):
        trainer().fit(Classifier(configure=configure(False)), loader(n=16))
