"""A progress bar for training and validation: tqdm on a terminal, plain periodic lines in a log file."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TextIO, TypeGuard

from treadle.callbacks.arguments import check_bool
from treadle.callbacks.hooks import Callback

__all__ = ["ProgressBar", "write_line"]

Backend = Literal["auto", "tqdm", "plain"]
_BACKENDS = ("auto", "tqdm", "plain")
# Seconds between plain lines when refresh_rate is left unset. A log file (CI, nohup, SLURM) cannot redraw
# a bar in place: every redraw would be a new line, thousands per epoch. A line every half minute, plus one
# per epoch, keeps a day-long run's log readable and still shows it is alive.
_PLAIN_DEFAULT_INTERVAL = 30.0
# How often the tqdm bar reads the loss for its postfix. Reading it waits for the device, and a bar redrawn
# every batch would otherwise add one host-device synchronisation to every step.
_LOSS_READ_SECONDS = 0.5


class ProgressBar(Callback):
    """Shows epoch, step, loss and the latest validation metrics while training, on global rank 0.

    On a terminal, a bar redrawn in place, with ``tqdm`` (``pip install 'treadle[progress]'``). Where the
    output cannot be redrawn in place (stderr is not a terminal: a log file, CI, ``nohup``, SLURM) or
    tqdm is not installed, plain lines instead: one every ``interval`` seconds (epoch, batch, step, loss,
    batches per second and the epoch's ETA) and one at the end of each epoch (with its validation metrics
    and the ETA of the whole fit when the number of epochs is known): tens of lines for a run, not a
    redraw per batch.

    The loss is read from the device (``loss.item()``) at most every half second with tqdm (and at the last
    batch and the end of each epoch), or once per printed line in plain mode, so the bar does not make
    every step wait for the GPU.

    In the Trainer everything comes from the trainer (it is the default progress bar). In a loop of your
    own, fire the hooks with what you have: ``on_train_epoch_start`` (optionally with ``epoch=`` and
    ``total=``, the number of batches), ``on_train_batch_end`` with ``loss=`` (and optionally ``batch_idx=``,
    the batch's index in the epoch, so that a loop resumed mid-epoch counts on from there),
    ``on_validation_end`` with ``metrics=`` (a mapping of names to numbers, as ``Fabric.log`` takes them),
    and ``on_fit_end`` when done. A Trainer resumed mid-epoch is counted from the batches it already ran.

    Args:
        refresh_rate: update the display every this many batches. Default: every batch for the tqdm bar;
            plain lines by time (see ``interval``). 0 disables the display.
        leave: keep each epoch's finished bar on screen (tqdm); plain lines always stay.
        backend: ``"auto"`` (tqdm when it is installed and the output is a terminal, else plain lines),
            ``"tqdm"`` (always tqdm, even into a file; an error if it is missing) or ``"plain"``.
        metrics: names of the metrics to show next to the loss. Default: every metric whose name starts
            with ``val`` (``val_loss``, ``val/acc``, ...).
        file: where to write; default ``sys.stderr`` as it is when the bar starts.
        interval: seconds between plain lines when ``refresh_rate`` is left unset (default 30); the end of
            each epoch always prints one.

    Raises:
        ValueError: ``refresh_rate`` is negative, ``interval`` is not a positive number, or ``backend`` is
            not a valid choice.
        ModuleNotFoundError: ``backend="tqdm"`` and tqdm is not installed (the message gives the pip line).

    Example::

        fabric = Fabric(callbacks=[ProgressBar()])
        for epoch in range(3):
            fabric.call("on_train_epoch_start", epoch=epoch, total=len(loader))
            for batch in loader:
                loss = ...
                fabric.call("on_train_batch_end", loss=loss)
            fabric.call("on_validation_end", metrics={"val_loss": evaluate(model)})
        fabric.call("on_fit_end")
    """

    rank_zero_only = True

    def __init__(
        self,
        refresh_rate: int | None = None,
        leave: bool = True,
        backend: Backend = "auto",
        metrics: Sequence[str] | None = None,
        file: TextIO | None = None,
        interval: float = _PLAIN_DEFAULT_INTERVAL,
    ) -> None:
        if refresh_rate is not None and (
            isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0
        ):
            raise ValueError(
                f"ProgressBar(refresh_rate={refresh_rate!r}) must be a non-negative int (batches between "
                "updates; 0 disables the display), e.g. refresh_rate=10."
            )
        if backend not in _BACKENDS:
            raise ValueError(
                f"ProgressBar(backend={backend!r}) is not a choice. Choose one of: "
                f"{', '.join(map(repr, _BACKENDS))}."
            )
        if isinstance(metrics, str):
            raise TypeError(
                f"ProgressBar(metrics={metrics!r}) must be a list of names, e.g. metrics=[{metrics!r}]."
            )
        if (
            isinstance(interval, bool)
            or not isinstance(interval, (int, float))
            or not math.isfinite(interval)
            or interval <= 0
        ):
            raise ValueError(
                f"ProgressBar(interval={interval!r}) must be a positive number of seconds between plain "
                "lines, e.g. interval=10."
            )
        check_bool("ProgressBar", "leave", leave)
        self._tqdm: Any = None
        if backend != "plain":
            self._tqdm = _import_tqdm(required=backend == "tqdm")
        self._backend = backend
        self._leave = leave
        self._metric_names = None if metrics is None else list(metrics)
        self._file = file
        self._interval = float(interval)
        self.refresh_rate = refresh_rate
        self._bar: Any = None  # the training bar (tqdm)
        self._val_bar: Any = None
        self._epoch = -1  # own count, for loops that do not say which epoch it is
        self._total: int | None = None
        self._batches = 0  # batches of this epoch done, counting those run before a resume
        self._resumed_at = 0  # batches of this epoch that ran before this process resumed it
        self._shown = 0  # batches already counted on the bar
        self._steps = 0  # batches seen overall, for loops without a trainer
        self._loss: float | None = None
        self._unread_loss: Any = None  # the newest loss, not yet read from the device
        self._loss_read_at = -math.inf
        self._metrics: dict[str, float] = {}
        self._epoch_started_at = time.perf_counter()
        self._printed_at = time.perf_counter()  # the last plain line
        self._epoch_open = False  # a training epoch whose "done" line is not printed yet
        self._epoch_seconds: list[float] = []  # of this run's complete epochs, for the fit's ETA

    @property
    def is_tqdm(self) -> bool:
        """Whether the display redraws a tqdm bar (True) or prints plain lines (False), for the stream it
        writes to now: with ``backend="auto"``, tqdm only on a terminal."""
        if self._tqdm is None:
            return False
        return self._backend == "tqdm" or _is_terminal(self._stream())

    # --- training ----------------------------------------------------------------------------------------
    def on_train_epoch_start(
        self, epoch: int | None = None, total: int | None = None, trainer: Any = None
    ) -> None:
        self._close_bars()
        done = 0
        if trainer is not None:
            epoch = trainer.current_epoch
            total = getattr(trainer, "num_training_batches", None)
            done = _batches_done(trainer)
        self._epoch = self._epoch + 1 if epoch is None else int(epoch)
        self._total = total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else None
        self._batches = self._shown = self._resumed_at = done
        self._epoch_started_at = self._printed_at = time.perf_counter()
        self._epoch_open = True
        if self.refresh_rate != 0 and self.is_tqdm:
            self._bar = self._tqdm(
                total=self._total,
                desc=self._epoch_label(trainer),
                leave=self._leave,
                file=self._stream(),
                dynamic_ncols=True,
                unit="it",
                initial=done,  # counted as already done, so the rate is that of this run's batches
            )

    def on_train_batch_end(
        self,
        loss: Any = None,
        output: Any = None,
        batch: Any = None,
        batch_idx: int | None = None,
        trainer: Any = None,
    ) -> None:
        if _is_index(batch_idx):
            if self._batches == 0:  # the epoch's first batch here: a loop resumed mid-epoch starts past 0
                self._resumed_at = batch_idx
            self._batches = batch_idx + 1
        else:
            self._batches += 1
        self._steps += 1
        if self.refresh_rate == 0:
            return
        self._unread_loss = loss if loss is not None else _loss_from_output(output)  # a reference: no sync
        if self._bar is not None:
            if self._batches % (self.refresh_rate or 1) != 0:
                return
            last = self._total is not None and self._batches >= self._total
            # The last batch's loss is read at once: validation may keep the 100% bar on screen for a while.
            if last or time.perf_counter() - self._loss_read_at >= _LOSS_READ_SECONDS:
                self._read_loss()
            self._refresh(trainer)
        elif self.refresh_rate is not None:
            if self._batches % self.refresh_rate == 0:
                self._read_loss()
                self._refresh(trainer)
        elif time.perf_counter() - self._printed_at >= self._interval:
            self._read_loss()
            self._refresh(trainer)

    def on_train_epoch_end(self, trainer: Any = None) -> None:
        complete = self._total is not None and self._batches >= self._total
        if complete and self._resumed_at == 0:
            self._epoch_seconds.append(time.perf_counter() - self._epoch_started_at)
        if self.refresh_rate == 0:
            return
        if self._bar is not None:
            if self._unread_loss is not None or self._shown != self._batches:
                self._read_loss()
                self._update_bar(trainer)
            self._bar.close()
            self._bar = None
        elif self._epoch_open and self._batches:
            self._read_loss()
            self._print_epoch_done(trainer)
        self._epoch_open = False

    # --- validation --------------------------------------------------------------------------------------
    def on_validation_start(self, total: int | None = None, trainer: Any = None) -> None:
        if trainer is not None:
            total = getattr(trainer, "num_val_batches", total)
        if self.refresh_rate != 0 and self.is_tqdm:
            self._val_bar = self._tqdm(
                total=total if isinstance(total, int) and total > 0 else None,
                desc="Validation",
                leave=False,
                file=self._stream(),
                dynamic_ncols=True,
                # Under the training bar when one is open, so the two do not overwrite each other.
                position=1 if self._bar is not None else None,
            )

    def on_validation_batch_end(
        self, output: Any = None, batch: Any = None, batch_idx: int | None = None
    ) -> None:
        if self._val_bar is not None:
            self._val_bar.update(1)

    def on_validation_end(self, metrics: Mapping[str, Any] | None = None, trainer: Any = None) -> None:
        if self._val_bar is not None:
            self._val_bar.close()
            self._val_bar = None
        if trainer is not None:
            metrics = getattr(trainer, "callback_metrics", metrics)
        if metrics:
            self._metrics = self._select(metrics)
        if self.refresh_rate == 0:
            return
        if self._bar is not None:
            self._update_bar(trainer)
        elif self._epoch_open and trainer is not None and self._batches:
            pass  # the Trainer ends the epoch next: its "done" line carries these metrics
        elif self._metrics and self._epoch >= 0:
            self._print(f"{self._epoch_label(trainer)} validation: {_format_metrics(self._metrics)}")
        elif self._metrics:  # validation outside a training epoch (e.g. Trainer.validate)
            self._print(f"Validation: {_format_metrics(self._metrics)}")

    # --- the end -----------------------------------------------------------------------------------------
    def on_train_end(self) -> None:
        self._close_bars()

    def on_fit_end(self) -> None:
        self._close_bars()

    def on_exception(self, exception: BaseException | None = None) -> None:
        self._close_bars()

    # --- internals ---------------------------------------------------------------------------------------
    def _read_loss(self) -> None:
        """The bar's only device read."""
        if self._unread_loss is not None:
            self._loss = _scalar(self._unread_loss, "loss")
            self._unread_loss = None
        self._loss_read_at = time.perf_counter()

    def _refresh(self, trainer: Any) -> None:
        if trainer is not None:
            self._metrics = self._select(getattr(trainer, "callback_metrics", {})) or self._metrics
        if self._bar is not None:
            self._update_bar(trainer)
            return
        total = f"/{self._total}" if self._total else ""
        timing = self._epoch_timing()
        self._print(
            f"{self._epoch_label(trainer)} batch {self._batches}{total}: {self._status(trainer)}"
            + (f" [{timing}]" if timing else "")
        )

    def _print_epoch_done(self, trainer: Any) -> None:
        seconds = time.perf_counter() - self._epoch_started_at
        ran = self._batches - self._resumed_at
        resumed = f" ({ran} after resuming)" if self._resumed_at else ""
        rate = f" ({_rate(ran, seconds)})" if ran > 0 and seconds > 0 else ""
        remaining = self._fit_eta(trainer)
        self._print(
            f"{self._epoch_label(trainer)} done: {self._batches} batches{resumed} in {seconds:.1f}s{rate}, "
            f"{self._status(trainer)}" + (f" [fit ETA {remaining}]" if remaining else "")
        )

    def _epoch_timing(self) -> str:
        """``12.3 it/s, ETA 0:41`` for this epoch so far; empty before a batch has run here."""
        seconds = time.perf_counter() - self._epoch_started_at
        ran = self._batches - self._resumed_at
        if ran <= 0 or seconds <= 0:
            return ""
        timing = _rate(ran, seconds)
        if self._total is not None and self._total > self._batches:
            timing += f", ETA {_clock((self._total - self._batches) * seconds / ran)}"
        return timing

    def _fit_eta(self, trainer: Any) -> str:
        max_epochs = getattr(trainer, "max_epochs", None) if trainer is not None else None
        if not (isinstance(max_epochs, int) and max_epochs > 0) or not self._epoch_seconds:
            return ""
        left = max_epochs - (self._epoch + 1)
        if left <= 0:
            return ""
        return _clock(left * sum(self._epoch_seconds) / len(self._epoch_seconds))

    def _update_bar(self, trainer: Any) -> None:
        self._bar.update(self._batches - self._shown)
        self._shown = self._batches
        self._bar.set_postfix_str(self._status(trainer), refresh=False)
        self._bar.refresh()

    def _status(self, trainer: Any) -> str:
        step = trainer.global_step if trainer is not None else self._steps
        parts = [f"step={step}"]
        if self._loss is not None:
            parts.append(f"loss={self._loss:.4g}")
        if self._metrics:
            parts.append(_format_metrics(self._metrics))
        return ", ".join(parts)

    def _epoch_label(self, trainer: Any) -> str:
        max_epochs = getattr(trainer, "max_epochs", None) if trainer is not None else None
        if isinstance(max_epochs, int) and max_epochs > 0:
            return f"Epoch {self._epoch + 1}/{max_epochs}"
        return f"Epoch {self._epoch + 1}"

    def _select(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        if self._metric_names is None:
            names = [name for name in metrics if name.startswith("val")]
        else:
            names = [name for name in self._metric_names if name in metrics]
        selected = {}
        for name in names:
            value = _scalar(metrics[name], name)
            if value is not None:
                selected[name] = value
        return selected

    def _stream(self) -> TextIO:
        return self._file if self._file is not None else sys.stderr

    def _print(self, line: str) -> None:
        self._printed_at = time.perf_counter()
        write_line(line, self._stream())

    def _close_bars(self) -> None:
        for name in ("_val_bar", "_bar"):
            bar = getattr(self, name)
            if bar is not None:
                bar.close()
                setattr(self, name, None)


def write_line(line: str, file: TextIO | None = None) -> None:
    """Print ``line`` (to ``file``, default ``sys.stdout``) without tearing a progress bar on screen.

    When tqdm is in use, the line goes through ``tqdm.write``, which clears the bars, prints, and draws
    them again; otherwise it is a plain ``print``. The built-in callbacks print through this.

    Example:
        >>> write_line("checkpoint saved")
        checkpoint saved
    """
    stream = file if file is not None else sys.stdout
    # Only if something already imported tqdm (a ProgressBar did): printing must never import it.
    tqdm_module = sys.modules.get("tqdm")
    write = getattr(getattr(tqdm_module, "tqdm", None), "write", None)
    if callable(write):
        write(line, file=stream)
        stream.flush()
    else:
        print(line, file=stream, flush=True)


def _import_tqdm(required: bool) -> Any:
    from treadle.optional import require

    try:
        return require("tqdm.auto", extra="progress", feature="ProgressBar(backend='tqdm')").tqdm
    except ModuleNotFoundError:
        if required:
            raise
        return None


def _loss_from_output(output: Any) -> Any:
    if isinstance(output, Mapping):
        return output.get("loss")
    return None


def _scalar(value: Any, name: str) -> float | None:
    # What Fabric.log accepts (numpy scalars included) is shown; anything else is left out rather than
    # stopping training over a display.
    from treadle.loggers.base import metric_value

    try:
        return float(metric_value(name, value, where="ProgressBar"))
    except (TypeError, ValueError):
        return None


def _is_index(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _batches_done(trainer: Any) -> int:
    # The Trainer's count of this epoch's batches already run: more than 0 when it resumed mid-epoch.
    done = getattr(getattr(trainer, "progress", None), "batches_done", 0)
    return done if _is_index(done) else 0


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def _rate(batches: int, seconds: float) -> str:
    per_second = batches / seconds
    return f"{per_second:.3g} it/s" if per_second >= 1 else f"{seconds / batches:.3g} s/it"


def _clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on, as tqdm shows times."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _format_metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(
        f"{name}={value:.4g}" if math.isfinite(value) else f"{name}={value}"
        for name, value in metrics.items()
    )
