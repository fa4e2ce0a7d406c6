"""ThroughputMonitor: samples/s, tokens/s, TFLOP/s and MFU, measured over windows of steps."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from treadle.callbacks.arguments import check_bool
from treadle.callbacks.hooks import Callback
from treadle.callbacks.progress import write_line

__all__ = ["ThroughputMonitor", "peak_flops_for"]

# Dense (no sparsity) peak FLOP/s per GPU from the vendors' datasheets, by compute dtype. A device
# matches an entry when all of the entry's words appear among the words of its name, in table order,
# so the more specific entries (PCIe, NVL) come first.
_PEAKS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (("H100", "PCIE"), {"bf16": 756.5e12, "fp16": 756.5e12, "tf32": 378e12, "fp32": 51.2e12}),
    (("H100", "NVL"), {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12}),
    (("H200", "NVL"), {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12}),
    (("H100",), {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    (("H200",), {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    (("A100",), {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    (("L40S",), {"bf16": 362.05e12, "fp16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12}),
    (("L4",), {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    (("A10",), {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),
    (("V100",), {"fp16": 125e12, "fp32": 15.7e12}),
)

# Compute dtype of each precision setting (by the name Fabric parsed it to).
_PRECISION_DTYPES = {
    "bf16-mixed": "bf16",
    "bf16-true": "bf16",
    "16-mixed": "fp16",
    "16-true": "fp16",
    "32-true": "fp32",
}


def peak_flops_for(device_name: str, dtype: str) -> float | None:
    """The dense peak FLOP/s of a GPU for ``dtype`` (``"bf16"``, ``"fp16"``, ``"tf32"``, ``"fp32"``), or None
    when the device or dtype is not in treadle's table.

    Example:
        >>> peak_flops_for("NVIDIA H100 80GB HBM3", "bf16")
        989400000000000.0
        >>> peak_flops_for("NVIDIA A100-SXM4-80GB", "tf32")
        156000000000000.0
    """
    words = set(re.split(r"[^A-Z0-9]+", device_name.upper()))
    for required, peaks in _PEAKS:
        if all(word in words for word in required):
            return peaks.get(dtype)
    return None


class ThroughputMonitor(Callback):
    """Logs training throughput every ``every_n_steps`` batches: batches/s, samples/s, tokens/s, TFLOP/s and
    model FLOP utilisation (MFU).

    Time is read from the host clock only at the window boundaries, so the monitor adds no
    synchronisation with the GPU; over a window of many steps the host's lead over the GPU cancels out.
    The first batch of each epoch (and the batches after a validation run) start a new window.

    FLOPs per batch: give ``flops_per_batch``, or let the monitor count them once with
    ``torch.utils.flop_counter.FlopCounterMode`` over one training batch (from ``on_train_batch_start`` to
    ``on_train_batch_end``, or without a start hook from one batch end to the next). The counted batch is
    not part of any window. Counting sees matrix products and convolutions, forward and backward; with
    ``torch.compile`` pass ``flops_per_batch`` instead. MFU is TFLOP/s over the device's peak: ``peak_flops``,
    or the dense peak for the precision's dtype from a table of datacenter GPUs (H100, H200, A100, L40S, L4,
    A10, V100); without either, MFU is not logged.

    Metric names: ``throughput/batches_per_sec`` (this rank's batches; every rank runs as many, so it is
    also the run's rate of training steps), ``throughput/samples_per_sec`` and ``throughput/tokens_per_sec``
    (all ranks together: this rank's count times the world size, assuming every rank's batches are alike),
    ``throughput/tflops_per_device`` and ``throughput/mfu`` (per device). In the Trainer they go to ``trainer.log_dict``;
    in a Fabric-only loop to ``fabric.log_dict`` (with the batch count as the step); the latest are in
    ``monitor.last_metrics``.

    Args:
        every_n_steps: batches per measurement window.
        batch_size_fn: samples in a batch; default the first dimension of the first tensor in it.
        length_fn: tokens in a batch (for tokens/s), e.g. ``lambda batch: batch["input_ids"].numel()``.
        flops_per_batch: FLOPs of one training batch on one device (forward, backward and update).
        measure_flops: count FLOPs on one batch when ``flops_per_batch`` is not given.
        peak_flops: the device's peak FLOP/s, for MFU.
        verbose: also print each window's metrics (global rank 0).

    Raises:
        ValueError: an argument is out of range; the message names it.

    Example::

        monitor = ThroughputMonitor(every_n_steps=50, length_fn=lambda batch: batch[0].numel())
        fabric = Fabric(precision="bf16-mixed", loggers=CSVLogger("logs"), callbacks=[monitor])
        model, optimizer = fabric.setup(model, optimizer)
        for batch in loader:
            fabric.call("on_train_batch_start", batch=batch)
            fabric.backward(model(batch).mean())
            optimizer.step()
            optimizer.zero_grad()
            fabric.call("on_train_batch_end", batch=batch)
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        batch_size_fn: Callable[[Any], int] | None = None,
        length_fn: Callable[[Any], int] | None = None,
        flops_per_batch: float | None = None,
        measure_flops: bool = True,
        peak_flops: float | None = None,
        verbose: bool = False,
    ) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(
                f"ThroughputMonitor(every_n_steps={every_n_steps!r}) must be an int >= 1, e.g. 50."
            )
        for argument, value in (("flops_per_batch", flops_per_batch), ("peak_flops", peak_flops)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            ):
                raise ValueError(
                    f"ThroughputMonitor({argument}={value!r}) must be a positive number or None."
                )
        for argument, fn in (("batch_size_fn", batch_size_fn), ("length_fn", length_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(
                    f"ThroughputMonitor({argument}={fn!r}) must be a function of the batch, or None."
                )
        self.every_n_steps = every_n_steps
        self.batch_size_fn = batch_size_fn
        self.length_fn = length_fn
        self.flops_per_batch: float | None = None if flops_per_batch is None else float(flops_per_batch)
        self.measure_flops = check_bool("ThroughputMonitor", "measure_flops", measure_flops)
        self.peak_flops: float | None = None if peak_flops is None else float(peak_flops)
        self.verbose = check_bool("ThroughputMonitor", "verbose", verbose)
        self.last_metrics: dict[str, float] = {}
        self._fabric: Any = None
        self._batches = 0  # batch ends seen, the step of Fabric-only logging
        self._counter: Any = None  # the FlopCounterMode while it counts
        self._counting_from_start = False
        self._window_start: float | None = None
        self._window = [0, 0, 0]  # batches, samples, tokens
        self._peak_resolved = peak_flops is not None

    # --- hooks -------------------------------------------------------------------------------------------
    def on_after_setup(self, fabric: Any = None) -> None:
        if fabric is not None:
            self._fabric = fabric

    def on_train_epoch_start(self) -> None:
        self._window_start = None

    def on_validation_start(self) -> None:
        self._window_start = None
        if self._counter is not None:  # validation inside the counted span: count another batch instead
            self._stop_counting()
            self.flops_per_batch = None

    def on_train_batch_start(self) -> None:
        if self._wants_flops() and self._counter is None:
            self._start_counting(from_start=True)

    def on_train_batch_end(self, batch: Any = None, trainer: Any = None, fabric: Any = None) -> None:
        self._batches += 1
        if self._counter is not None:
            self._stop_counting()
            self._window_start = None
        elif self._wants_flops():
            self._start_counting(from_start=False)  # counts the next batch, end to end
            self._window_start = None
            return
        now = time.perf_counter()
        if self._window_start is None:
            self._window_start = now
            self._window = [0, 0, 0]
            return
        window = self._window
        window[0] += 1
        if batch is not None:
            window[1] += self._batch_size(batch)
            if self.length_fn is not None:
                window[2] += int(self.length_fn(batch))
        if window[0] >= self.every_n_steps:
            self._report(now - self._window_start, trainer, fabric)
            self._window_start = now
            self._window = [0, 0, 0]

    def on_train_end(self) -> None:
        if self._counter is not None:
            self._stop_counting()

    def on_exception(self) -> None:
        # FlopCounterMode sits on torch's dispatch stack for the whole process: left there after a failed
        # fit, it would count (and slow) every operation that follows, e.g. in the rest of a notebook.
        counter, self._counter = self._counter, None
        if counter is not None:
            counter.__exit__(None, None, None)
        self._window_start = None

    # --- internals ---------------------------------------------------------------------------------------
    def _wants_flops(self) -> bool:
        return self.measure_flops and self.flops_per_batch is None

    def _start_counting(self, from_start: bool) -> None:
        from torch.utils.flop_counter import FlopCounterMode  # only needed once, on the counted batch

        self._counter = FlopCounterMode(display=False)
        self._counter.__enter__()
        self._counting_from_start = from_start

    def _stop_counting(self) -> None:
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)
        total = float(counter.get_total_flops())
        self.flops_per_batch = total if total > 0 else None
        if self.flops_per_batch is None:
            self.measure_flops = False  # nothing countable ran (e.g. a compiled model): stop trying

    def _batch_size(self, batch: Any) -> int:
        if self.batch_size_fn is not None:
            return int(self.batch_size_fn(batch))
        tensor = _first_tensor(batch)
        return int(tensor.shape[0]) if tensor is not None and tensor.dim() > 0 else 1

    def _report(self, seconds: float, trainer: Any, fabric: Any) -> None:
        if trainer is not None:
            fabric = trainer.fabric
        fabric = fabric if fabric is not None else self._fabric
        world_size = int(fabric.world_size) if fabric is not None else 1
        batches, samples, tokens = self._window
        metrics = {"throughput/batches_per_sec": batches / seconds}
        if samples:
            metrics["throughput/samples_per_sec"] = samples * world_size / seconds
        if tokens:
            metrics["throughput/tokens_per_sec"] = tokens * world_size / seconds
        if self.flops_per_batch is not None:
            flops_per_sec = self.flops_per_batch * batches / seconds
            metrics["throughput/tflops_per_device"] = flops_per_sec / 1e12
            peak = self._peak(fabric)
            if peak is not None:
                metrics["throughput/mfu"] = flops_per_sec / peak
        self.last_metrics = metrics
        if trainer is not None:
            trainer.log_dict(metrics)
        elif fabric is not None:
            fabric.log_dict(metrics, step=self._batches)
        if self.verbose and (fabric is None or fabric.is_global_zero):
            shown = ", ".join(f"{name.split('/')[-1]}={value:.4g}" for name, value in metrics.items())
            write_line(f"ThroughputMonitor: {shown}")

    def _peak(self, fabric: Any) -> float | None:
        if not self._peak_resolved:
            self._peak_resolved = True
            self.peak_flops = _device_peak(fabric)
        return self.peak_flops


def _device_peak(fabric: Any) -> float | None:
    device = fabric.device if fabric is not None else None
    if device is None or device.type != "cuda":
        return None
    dtype = _PRECISION_DTYPES.get(str(getattr(fabric.precision, "name", "")))
    if dtype == "fp32" and torch.get_float32_matmul_precision() != "highest":
        dtype = "tf32"  # float32 matrix products run on tensor cores in TF32
    if dtype is None:
        return None
    return peak_flops_for(torch.cuda.get_device_name(device), dtype)


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None
