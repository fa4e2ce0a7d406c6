from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn

from tests.callbacks.tiny_trainer import TinyRegression, fit_tiny
from treadle import Fabric
from treadle.callbacks.lr_monitor import LearningRateMonitor


class Recorder:
    def __init__(self) -> None:
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def series(self, name: str) -> list[tuple[int | None, float]]:
        return [(step, row[name]) for step, row in self.rows if name in row]


def test_step_interval_fabric_loop_two_groups_and_scheduler() -> None:
    recorder = Recorder()
    monitor = LearningRateMonitor()
    fabric = Fabric(accelerator="cpu", loggers=recorder, callbacks=[monitor])
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    optimizer = torch.optim.AdamW(
        [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.5}], lr=1.0
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer = fabric.setup(model, optimizer)
    for _ in range(3):
        fabric.backward(model(torch.ones(1, 2)).sum())
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    # Each value is the rate the step used, logged just before it, at the optimizer's step count.
    assert recorder.series("lr-AdamW") == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert recorder.series("lr-AdamW/pg1") == [(0, 0.5), (1, 0.25), (2, 0.125)]
    assert not any(name.startswith("momentum") for _, row in recorder.rows for name in row)


def test_two_optimizers_of_one_class_get_distinct_names_and_momentum() -> None:
    recorder = Recorder()
    fabric = Fabric(accelerator="cpu", loggers=recorder, callbacks=[LearningRateMonitor(log_momentum=True)])
    a, b, c = nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD([{"params": b.parameters(), "name": "head"}], lr=0.2)
    opt_c = torch.optim.Adam(c.parameters(), lr=0.3, betas=(0.8, 0.99))
    model = nn.ModuleList([a, b, c])
    model, opt_a, opt_b, opt_c = fabric.setup(model, opt_a, opt_b, opt_c)
    fabric.backward(sum(layer(torch.ones(1, 1)).sum() for layer in (a, b, c)))
    for optimizer in (opt_a, opt_b, opt_c):
        optimizer.step()
    logged = {name: value for _, row in recorder.rows for name, value in row.items()}
    assert logged == {
        "lr-SGD": 0.1,
        "momentum-SGD": 0.9,
        "lr-SGD-1/head": 0.2,
        "momentum-SGD-1/head": 0.0,
        "lr-Adam": 0.3,
        "momentum-Adam": 0.8,
    }


def test_epoch_interval_fabric_loop_logs_once_per_epoch() -> None:
    recorder = Recorder()
    fabric = Fabric(accelerator="cpu", loggers=recorder, callbacks=[LearningRateMonitor("epoch")])
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    for _ in range(2):
        fabric.call("on_train_epoch_start")
        for _ in range(3):
            fabric.backward(model(torch.ones(1, 1)).sum())
            optimizer.step()
            optimizer.zero_grad()
        scheduler.step()
    assert recorder.series("lr-SGD") == [(0, 1.0), (3, pytest.approx(0.1))]


def test_without_fabric_or_trainer_it_says_how_to_register() -> None:
    monitor = LearningRateMonitor()
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match=r"Fabric\(callbacks=\[LearningRateMonitor\(\)\]\)"):
        monitor.on_before_optimizer_step(optimizer=optimizer)


def test_bad_interval() -> None:
    with pytest.raises(ValueError, match=r"logging_interval='batch'\) is not a choice"):
        LearningRateMonitor("batch")  # type: ignore[arg-type]


def test_trainer_logs_to_callback_metrics_with_schedule() -> None:
    monitor = LearningRateMonitor("epoch")
    trainer = fit_tiny(callbacks=[monitor], model=TinyRegression(lr=0.4, scheduler=True))
    # StepLR(gamma=0.5) stepped once per epoch: the second epoch starts at 0.2.
    assert trainer.callback_metrics["lr-SGD"] == pytest.approx(0.2)


def test_trainer_step_interval_sees_every_step() -> None:
    seen: list[float] = []

    class Spy(LearningRateMonitor):
        def _log(self, optimizers: Any, step: int | None) -> None:
            super()._log(optimizers, step)
            seen.append(self.last_logged["lr-SGD"])

    trainer = fit_tiny(callbacks=[Spy()])
    assert len(seen) == trainer.global_step
    assert trainer.callback_metrics["lr-SGD"] == pytest.approx(0.05)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_a_second_fit_of_one_trainer_logs_only_its_own_optimizer(interval: str) -> None:
    from tests.callbacks.tiny_trainer import loaders, trainer_class

    logged: list[dict[str, float]] = []

    class Spy(LearningRateMonitor):
        def _log(self, optimizers: Any, step: int | None) -> None:
            super()._log(optimizers, step)
            logged.append(dict(self.last_logged))

    monitor = Spy(interval)  # type: ignore[arg-type]
    trainer = trainer_class()(accelerator="cpu", max_epochs=2, callbacks=[monitor], enable_progress_bar=False)
    train, _ = loaders()
    trainer.fit(TinyRegression(lr=0.1), train)
    logged.clear()
    trainer.fit(TinyRegression(lr=0.01), train)  # configure_optimizers makes a new SGD
    assert logged
    assert all(values == {"lr-SGD": pytest.approx(0.01)} for values in logged)
