"""CUDA paths of the built-in callbacks: event timing, throughput, the loss guard's non-blocking read.

Skipped without a GPU; run on the GPU machine by bench/gpu.sh.
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import time
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from treadle import Fabric
from treadle.callbacks.loss_guard import LossGuard
from treadle.callbacks.throughput import ThroughputMonitor
from treadle.callbacks.timer import IterationTimer

pytestmark = pytest.mark.gpu


@contextlib.contextmanager
def no_sync() -> Iterator[None]:
    """Any synchronising CUDA call inside the block raises."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def busy_work(x: torch.Tensor, repeats: int) -> torch.Tensor:
    for _ in range(repeats):
        x = torch.tanh(x @ x) * 0.5
    return x


def test_event_timer_adds_no_sync_and_matches_a_synchronised_measurement() -> None:
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    busy_work(x, 20)  # warm-up
    lines = io.StringIO()
    timer = IterationTimer(every_n_steps=5, file=lines)
    iterations = 40
    torch.cuda.synchronize()
    with no_sync():
        timer.on_train_batch_start()
        start = time.perf_counter()
        for _ in range(iterations):
            loss = busy_work(x, 40).float().mean()
            timer.on_train_batch_end(loss=loss)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    summary = timer.summary()
    assert summary.count == iterations
    # The events span from the first on_train_batch_start to the last batch end: the same interval the
    # host measured, give or take the launch of the first kernel.
    assert summary.total == pytest.approx(wall, rel=0.03)
    assert len(lines.getvalue().splitlines()) == iterations // 5

    synced = IterationTimer(every_n_steps=0, sync=True, file=io.StringIO())
    synced.on_train_batch_start()
    for _ in range(iterations):
        synced.on_train_batch_end(loss=busy_work(x, 40).float().mean())
    print(f"event timer: {summary}; synchronised timer: {synced.summary()}; wall {wall * 1000:.2f} ms")
    assert synced.summary().median == pytest.approx(summary.median, rel=0.05)


def test_throughput_on_cuda_counts_flops_and_matches_wall_clock() -> None:
    fabric = Fabric(accelerator="cuda", precision="bf16-mixed")
    monitor = ThroughputMonitor(every_n_steps=10, length_fn=lambda batch: batch.shape[0] * 16)
    fabric.add_callback(monitor)
    model = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model, optimizer = fabric.setup(model, optimizer)
    batch = torch.randn(256, 1024, device=fabric.device)
    torch.cuda.synchronize()
    start = None
    with no_sync():
        for step in range(41):
            fabric.call("on_train_batch_start", batch=batch)
            fabric.backward(model(batch).float().pow(2).mean())
            optimizer.step()
            optimizer.zero_grad()
            fabric.call("on_train_batch_end", batch=batch, fabric=fabric)
            if step == 0:
                start = time.perf_counter()  # the counted batch ended: the first window starts
    torch.cuda.synchronize()
    assert start is not None
    wall_rate = 40 / (time.perf_counter() - start)
    # Five matrix products of 256 x 1024 x 4096 (two forward, three backward; no input gradient).
    assert monitor.flops_per_batch == 5 * 2 * 256 * 1024 * 4096
    metrics = monitor.last_metrics
    assert metrics["throughput/batches_per_sec"] == pytest.approx(wall_rate, rel=0.25)
    assert metrics["throughput/samples_per_sec"] == pytest.approx(256 * metrics["throughput/batches_per_sec"])
    assert metrics["throughput/tokens_per_sec"] == pytest.approx(16 * metrics["throughput/samples_per_sec"])
    tflops = metrics["throughput/tflops_per_device"]
    assert tflops == pytest.approx(monitor.flops_per_batch * metrics["throughput/batches_per_sec"] / 1e12)
    assert tflops > 1.0
    if "throughput/mfu" in metrics:  # the device is in the peak table (an H100/H200/A100/...)
        assert 0.0 < metrics["throughput/mfu"] < 1.0
    print(f"throughput on {torch.cuda.get_device_name()}: {metrics}")


def test_loss_guard_stops_on_cuda_without_synchronising() -> None:
    guard = LossGuard(spike_factor=10.0, min_history=3, verbose=False)
    losses = [torch.full((), 1.0, device="cuda") for _ in range(6)]
    torch.cuda.synchronize()
    seen = 0
    with no_sync():
        losses[4] = losses[4] * math.nan
        for loss in losses:
            guard.on_before_backward(loss=loss)
            guard.on_train_batch_end()
            seen += 1
            if guard.should_stop:
                break
    guard.on_train_end()  # reads what is still in flight (blocking is allowed here)
    assert guard.should_stop
    assert guard.stopping_reason == "loss nan (number 5) is not finite"
    print(f"LossGuard saw the NaN of loss 5 after {seen} losses")


def test_timer_figures_in_a_fabric_loop_are_plausible() -> None:
    fabric = Fabric(accelerator="cuda", precision="bf16-mixed")
    timer = IterationTimer(every_n_steps=0, file=io.StringIO())
    fabric.add_callback(timer)
    model = nn.Sequential(*(nn.Linear(2048, 2048) for _ in range(8)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = fabric.setup(model, optimizer)
    batch = torch.randn(512, 2048, device=fabric.device)
    step_times = []
    for _ in range(30):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fabric.call("on_train_batch_start")
        fabric.backward(model(batch).float().pow(2).mean())
        optimizer.step()
        optimizer.zero_grad()
        fabric.call("on_train_batch_end")
        torch.cuda.synchronize()
        step_times.append(time.perf_counter() - start)
    durations = timer.durations
    assert len(durations) == 30
    # Synchronised per step here, so each event interval is one step plus the gap between steps.
    assert statistics.median(durations[5:]) == pytest.approx(statistics.median(step_times[5:]), rel=0.15)
