"""LossGuard: react to a non-finite or spiking loss by stopping training or skipping the step."""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal

import torch

from treadle.callbacks.arguments import check_bool
from treadle.callbacks.hooks import Callback
from treadle.callbacks.progress import write_line

__all__ = ["LossGuard"]

Action = Literal["stop", "skip"]
_ACTIONS = ("stop", "skip")


class LossGuard(Callback):
    """Watches every loss passed to ``fabric.backward`` and stops training, or skips the optimizer step,
    when the loss is NaN/infinite or (with ``spike_factor``) far above its recent mean.

    A loss is a spike when it exceeds ``spike_factor`` times the mean of the last ``window`` accepted
    losses, once at least ``min_history`` of them were seen and only while that mean is positive (the
    test assumes positive losses, as cross-entropy and MSE are). Flagged losses do not enter the history.
    All of this is computed on the loss's device, without reading the loss back. In the Trainer with
    ``grad_accum_steps``, the guard undoes the Trainer's division of each loss by its accumulation group's
    size, so it judges the loss ``training_step`` returned and an epoch's short last group is not a spike.

    ``action="stop"``: the flag is copied to the host without waiting, and read once the device has
    produced it (on CPU at once, on CUDA usually a step or two later), so the guard adds no
    synchronisation. Then, in the Trainer, ``trainer.request_stop(reason)`` (reduced across ranks); in a
    Fabric-only loop ``guard.should_stop`` becomes True (with several processes, agree on it with
    ``fabric.all_reduce_bool(guard.should_stop)`` before leaving the loop).

    ``action="skip"``: the flag must be known before the optimizer steps, so the guard reads it after each
    backward (one device synchronisation per backward). What "skip" means precisely: the gradients of the
    flagged optimizer step are discarded, and torch's optimizers leave every parameter and its optimizer
    state (moments, step count, weight decay) untouched, as if the step's batches never happened. The
    learning-rate scheduler and the Trainer's step counter still advance. With gradient accumulation, a
    flagged micro-batch discards its whole accumulation group. The gradients are set to None (an optimizer
    skips parameters without a gradient); under float16 mixed precision with a grad scaler they are filled
    with NaN instead, so the scaler skips the step (and, as for any overflow, lowers its scale). A skipped
    step is one backward (or accumulation group) whose optimizer steps were skipped: with several optimizers
    stepping after one backward (e.g. a GAN's generator and discriminator) it counts once. After
    ``max_consecutive_skips`` skipped steps in a row the guard stops training as with ``"stop"``, since the
    run is not recovering. With several processes the decision is reduced across them (any rank's flagged
    loss skips the step on every rank), so the replicas stay identical.

    Args:
        action: ``"stop"`` or ``"skip"``.
        spike_factor: flag losses above this multiple of the recent mean (> 1); None checks finiteness only.
        window: how many recent losses the mean is taken over.
        min_history: losses needed before spikes are checked; default ``min(window, 10)``.
        max_consecutive_skips: with ``"skip"``, stop after this many skipped steps in a row (None: never).
        verbose: print each action taken (global rank 0).

    Raises:
        ValueError: an argument is out of range; the message names it.

    Example::

        guard = LossGuard(action="skip", spike_factor=5.0)
        fabric = Fabric(callbacks=[guard])
        model, optimizer = fabric.setup(model, optimizer)
        for batch in loader:
            fabric.backward(model(batch).mean())  # the guard sees the loss here
            optimizer.step()  # does nothing to the parameters if the loss was flagged
            optimizer.zero_grad()
            if guard.should_stop:
                break
        print(guard.skipped_steps)
    """

    def __init__(
        self,
        action: Action = "stop",
        spike_factor: float | None = None,
        window: int = 100,
        min_history: int | None = None,
        max_consecutive_skips: int | None = 10,
        verbose: bool = True,
    ) -> None:
        if action not in _ACTIONS:
            raise ValueError(f"LossGuard(action={action!r}) is not a choice. Choose one of: 'stop', 'skip'.")
        if spike_factor is not None and (
            isinstance(spike_factor, bool)
            or not isinstance(spike_factor, (int, float))
            or not spike_factor > 1
        ):
            raise ValueError(
                f"LossGuard(spike_factor={spike_factor!r}) must be a number > 1 (e.g. 5.0: five times the recent "
                "mean), or None to check only for NaN/inf."
            )
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"LossGuard(window={window!r}) must be an int >= 1.")
        if min_history is None:
            min_history = min(window, 10)
        if (
            isinstance(min_history, bool)
            or not isinstance(min_history, int)
            or not 1 <= min_history <= window
        ):
            raise ValueError(
                f"LossGuard(min_history={min_history!r}) must be an int from 1 to window={window}."
            )
        if max_consecutive_skips is not None and (
            isinstance(max_consecutive_skips, bool)
            or not isinstance(max_consecutive_skips, int)
            or max_consecutive_skips < 1
        ):
            raise ValueError(
                f"LossGuard(max_consecutive_skips={max_consecutive_skips!r}) must be an int >= 1 or None."
            )
        self.action = action
        self.spike_factor = None if spike_factor is None else float(spike_factor)
        self.window = window
        self.min_history = min_history
        self.max_consecutive_skips = max_consecutive_skips
        self.verbose = check_bool("LossGuard", "verbose", verbose)
        self.should_stop = False
        self.stopping_reason: str | None = None
        self.skipped_steps = 0
        self._consecutive_skips = 0
        self._fabric: Any = None
        self._trainer: Any = None
        self._losses = 0  # losses seen
        self._history: torch.Tensor | None = None  # ring buffer of accepted losses
        self._accepted: torch.Tensor | None = None  # 1.0 where the ring buffer holds an accepted loss
        self._pending: deque[tuple[int, torch.Tensor, Any]] = (
            deque()
        )  # "stop": flags on their way to the host
        self._skip_pending = False  # the current backward group is flagged: its optimizer steps are skipped
        self._skip_counted = False  # the current group's skip was counted (once, however many optimizers)
        self._stepped = False  # an optimizer stepped since the last backward: the next one starts a new group
        self._loss_scale = 1.0  # what the Trainer divided this batch's loss by (its accumulation group size)
        self._last_reason: str | None = None
        self._modules: list[Any] = []

    # --- hooks -------------------------------------------------------------------------------------------
    def on_after_setup(self, fabric: Any = None, module: Any = None) -> None:
        if fabric is not None:
            self._fabric = fabric
        if module is not None:
            self._modules.append(module)  # whose gradients to discard when no optimizer is in sight

    def on_fit_start(self, trainer: Any = None) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: Any = None) -> None:
        self._trainer = trainer

    def on_train_batch_start(self, trainer: Any = None, batch_idx: int | None = None) -> None:
        if trainer is None or batch_idx is None:
            return
        self._trainer = trainer
        # The Trainer passes loss / group to backward, the group being the batch's accumulation group (an
        # epoch's last one may be short). Judged scaled, a short group's loss looks `accum` times too large.
        self._loss_scale = float(trainer.accumulation_group_size)

    def on_before_backward(self, loss: Any = None) -> None:
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        self._losses += 1
        loss = loss.detach().reshape(()).float()
        if self._loss_scale != 1.0:
            loss = loss * self._loss_scale
        report = self._inspect(loss)
        if self.action == "skip":
            self._pending.append((self._losses, report, None))
            return
        if report.device.type == "cuda":
            host = torch.empty(report.shape, dtype=report.dtype, pin_memory=True)
            host.copy_(report, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record(torch.cuda.current_stream(report.device))
            self._pending.append((self._losses, host, event))
        else:
            self._pending.append((self._losses, report, None))
        self._read_stop_flags()

    def on_after_backward(self) -> None:
        if self.action != "skip":
            return
        if self._stepped:  # the first backward after an optimizer step begins the next group
            self._stepped = self._skip_pending = self._skip_counted = False
        if not self._pending:
            return
        index, report, _ = self._pending.popleft()
        self._pending.clear()
        values = report.tolist()  # the synchronisation "skip" needs: the decision comes before the step
        reason = self._reason(index, values)
        fabric = self._fabric
        if fabric is not None and fabric.world_size > 1:
            # Under data parallelism every rank must skip the same steps, or the replicas drift apart.
            flagged = fabric.all_reduce_bool(reason is not None, "any")
            if flagged and reason is None:
                reason = f"another rank's loss number {index} was flagged"
        if reason is None:
            return
        if not self._skip_pending:
            self._say(f"LossGuard: skipping the step, {reason}.")
        self._skip_pending = True
        self._last_reason = reason
        self._discard_gradients()

    def on_before_optimizer_step(self, optimizer: Any = None) -> None:
        # The flag stays up until the next backward: every optimizer stepping after the flagged backward
        # (several in a GAN) must skip, and the skip counts once, or each unflagged optimizer's hook
        # would reset the count of skips in a row.
        self._stepped = True
        if not self._skip_pending:
            self._consecutive_skips = 0
            return
        # Gradients of micro-batches after the flagged one were accumulated afresh: discard them too.
        self._discard_gradients(optimizer)
        if self._skip_counted:
            return
        self._skip_counted = True
        self.skipped_steps += 1
        self._consecutive_skips += 1
        limit = self.max_consecutive_skips
        if limit is not None and self._consecutive_skips >= limit:
            self._stop(f"{self._consecutive_skips} steps in a row were skipped (last: {self._last_reason})")

    def on_train_batch_end(self, trainer: Any = None) -> None:
        self._loss_scale = 1.0
        if trainer is not None:
            self._trainer = trainer
        if self.action == "stop":
            self._read_stop_flags()

    def on_train_end(self) -> None:
        if self.action == "stop":
            self._read_stop_flags(block=True)

    # --- internals ---------------------------------------------------------------------------------------
    def _inspect(self, loss: torch.Tensor) -> torch.Tensor:
        """``[non-finite, spike, loss, mean]`` as one tensor on the loss's device; updates the history."""
        non_finite = ~torch.isfinite(loss)
        if self.spike_factor is None:
            zero = torch.zeros((), device=loss.device)
            return torch.stack([non_finite.float(), zero, loss, zero])
        if self._history is None or self._history.device != loss.device:
            self._history = torch.zeros(self.window, device=loss.device)
            self._accepted = torch.zeros(self.window, device=loss.device)
        history, accepted = self._history, self._accepted
        assert accepted is not None
        count = accepted.sum()
        mean = (history * accepted).sum() / count.clamp(min=1.0)
        spike = (count >= self.min_history) & (mean > 0) & (loss > self.spike_factor * mean) & ~non_finite
        flagged = non_finite | spike
        slot = (self._losses - 1) % self.window
        history[slot] = torch.where(flagged, torch.zeros_like(loss), loss)
        accepted[slot] = (~flagged).float()
        return torch.stack([non_finite.float(), spike.float(), loss, mean])

    def _reason(self, index: int, values: list[float]) -> str | None:
        non_finite, spike, loss, mean = values
        if non_finite:
            return f"loss {loss} (number {index}) is not finite"
        if spike:
            return f"loss {loss:.6g} (number {index}) is more than {self.spike_factor:g}x the recent mean {mean:.6g}"
        return None

    def _read_stop_flags(self, block: bool = False) -> None:
        while self._pending:
            index, report, event = self._pending[0]
            if event is not None:
                if block:
                    event.synchronize()
                elif not event.query():  # not produced yet: look again at the next hook, never wait
                    return
            self._pending.popleft()
            reason = self._reason(index, report.tolist())
            if reason is not None:
                self._pending.clear()
                self._stop(reason)
                return

    def _stop(self, reason: str) -> None:
        if self.should_stop:
            return
        self.should_stop = True
        self.stopping_reason = reason
        if self._trainer is not None:
            self._trainer.request_stop(f"LossGuard: {reason}")
        self._say(f"LossGuard: stopping, {reason}.")

    def _discard_gradients(self, optimizer: Any = None) -> None:
        scaler = getattr(getattr(self._fabric, "precision", None), "scaler", None)
        for param in self._parameters(optimizer):
            if param.grad is None:
                continue
            if scaler is not None:
                param.grad.fill_(math.nan)  # the scaler skips a step whose gradients are not finite
            else:
                param.grad = None

    def _parameters(self, optimizer: Any) -> list[torch.Tensor]:
        if optimizer is not None:
            return [param for group in optimizer.param_groups for param in group["params"]]
        optimizers = getattr(self._trainer, "optimizers", None) or []
        if optimizers:
            return [param for opt in optimizers for group in opt.param_groups for param in group["params"]]
        return [param for module in self._modules for param in module.parameters()]

    def _say(self, line: str) -> None:
        fabric = self._fabric
        if self.verbose and (fabric is None or fabric.is_global_zero):
            write_line(line)
