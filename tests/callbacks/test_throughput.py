from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tests.callbacks.tiny_trainer import FailsAtBatch, fit_tiny
from treadle import Fabric
from treadle.callbacks.throughput import ThroughputMonitor, peak_flops_for


class Recorder:
    def __init__(self) -> None:
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))


def step_flops() -> int:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with FlopCounterMode(display=False) as counter:
        model(torch.ones(8, 16)).pow(2).mean().backward()
    return int(counter.get_total_flops())


def fabric_loop(monitor: ThroughputMonitor, batches: int, batch_start: bool = True) -> Recorder:
    recorder = Recorder()
    fabric = Fabric(accelerator="cpu", loggers=recorder, callbacks=[monitor])
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer = fabric.setup(model, optimizer)
    for _ in range(batches):
        batch = (torch.ones(8, 16), torch.zeros(8, 4))
        if batch_start:
            fabric.call("on_train_batch_start", batch=batch)
        fabric.backward(model(batch[0]).pow(2).mean())
        optimizer.step()
        optimizer.zero_grad()
        fabric.call("on_train_batch_end", batch=batch)
    return recorder


def test_logs_rates_and_counts_flops_once() -> None:
    monitor = ThroughputMonitor(every_n_steps=3, length_fn=lambda batch: batch[0].numel(), peak_flops=1e12)
    recorder = fabric_loop(monitor, batches=7)
    # Batch 1 is counted (not timed); its end opens the first window; windows close at batches 4 and 7.
    assert [step for step, _ in recorder.rows] == [4, 7]
    assert monitor.flops_per_batch == step_flops() > 0
    metrics = recorder.rows[-1][1]
    assert set(metrics) == {
        "throughput/batches_per_sec",
        "throughput/samples_per_sec",
        "throughput/tokens_per_sec",
        "throughput/tflops_per_device",
        "throughput/mfu",
    }
    rate = metrics["throughput/batches_per_sec"]
    assert metrics["throughput/samples_per_sec"] == pytest.approx(8 * rate)
    assert metrics["throughput/tokens_per_sec"] == pytest.approx(8 * 16 * rate)
    assert metrics["throughput/tflops_per_device"] == pytest.approx(step_flops() * rate / 1e12)
    assert metrics["throughput/mfu"] == pytest.approx(step_flops() * rate / 1e12)
    assert monitor.last_metrics == metrics


def test_without_batch_start_counts_from_one_end_to_the_next() -> None:
    monitor = ThroughputMonitor(every_n_steps=3)
    recorder = fabric_loop(monitor, batches=5, batch_start=False)
    assert monitor.flops_per_batch == step_flops()
    assert [step for step, _ in recorder.rows] == [5]
    assert "throughput/mfu" not in recorder.rows[0][1]  # CPU: no known peak


def test_given_flops_skip_counting_and_batch_size_fn() -> None:
    monitor = ThroughputMonitor(every_n_steps=2, flops_per_batch=1e9, batch_size_fn=lambda batch: 100)
    recorder = fabric_loop(monitor, batches=3)
    assert [step for step, _ in recorder.rows] == [3]
    metrics = recorder.rows[0][1]
    assert monitor.flops_per_batch == 1e9
    assert metrics["throughput/samples_per_sec"] == pytest.approx(100 * metrics["throughput/batches_per_sec"])


def test_validation_restarts_the_window() -> None:
    monitor = ThroughputMonitor(every_n_steps=2, measure_flops=False)
    monitor.on_train_batch_end()
    monitor.on_train_batch_end()
    monitor.on_validation_start()
    monitor.on_train_batch_end()  # opens a new window
    monitor.on_train_batch_end()
    assert monitor.last_metrics == {}
    monitor.on_train_batch_end()
    assert set(monitor.last_metrics) == {"throughput/batches_per_sec"}


def test_peak_table() -> None:
    assert peak_flops_for("NVIDIA H200", "bf16") == 989.4e12
    assert peak_flops_for("NVIDIA H100 PCIe", "bf16") == 756.5e12
    assert peak_flops_for("NVIDIA A100-SXM4-40GB", "fp32") == 19.5e12
    assert peak_flops_for("NVIDIA L4", "fp16") == 121e12
    assert peak_flops_for("NVIDIA A10G", "bf16") is None  # not A10
    assert peak_flops_for("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 on V100
    assert peak_flops_for("NVIDIA GeForce RTX 4090", "bf16") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 0}, "every_n_steps=0"),
        ({"flops_per_batch": -1.0}, "flops_per_batch=-1.0"),
        ({"peak_flops": 0}, "peak_flops=0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThroughputMonitor(**kwargs)


def test_trainer_logs_throughput_to_callback_metrics() -> None:
    monitor = ThroughputMonitor(every_n_steps=2)
    trainer = fit_tiny(callbacks=[monitor])
    metrics = trainer.callback_metrics
    assert metrics["throughput/samples_per_sec"] == pytest.approx(8 * metrics["throughput/batches_per_sec"])
    assert metrics["throughput/tflops_per_device"] > 0
    assert monitor.flops_per_batch is not None and monitor.flops_per_batch > 0


@pytest.mark.parametrize("flag", ["measure_flops", "verbose"])
def test_flags_must_be_bools(flag: str) -> None:
    with pytest.raises(TypeError, match=rf"ThroughputMonitor\({flag}='x'\) must be True or False"):
        ThroughputMonitor(**{flag: "x"})


def test_an_exception_in_fit_takes_the_flop_counter_off_the_dispatch_stack() -> None:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    monitor = ThroughputMonitor()
    with pytest.raises(KeyboardInterrupt):
        fit_tiny(callbacks=[monitor], model=FailsAtBatch(bad_batch=0))  # fails while FLOPs are counted
    assert _get_current_dispatch_mode_stack() == []
    monitor.on_exception()  # nothing running: a no-op


def test_batches_per_sec_is_per_rank_samples_per_sec_all_ranks() -> None:
    class TwoRanks:
        world_size = 2
        is_global_zero = True
        device = torch.device("cpu")

        def log_dict(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            pass

    monitor = ThroughputMonitor(every_n_steps=3, measure_flops=False)
    fabric = TwoRanks()
    for _ in range(4):
        monitor.on_train_batch_end(batch=torch.zeros(8, 3), fabric=fabric)
    metrics = monitor.last_metrics
    # Each rank ran 3 batches of 8 in the window: the run saw 2 x 3 x 8 samples but 3 steps.
    assert metrics["throughput/samples_per_sec"] == pytest.approx(
        2 * 8 * metrics["throughput/batches_per_sec"]
    )
    assert ThroughputMonitor.__doc__ is not None
    assert "``throughput/batches_per_sec`` (this rank's batches" in ThroughputMonitor.__doc__
