"""The Trainer: a fit loop written with nothing but Fabric's public API and callbacks.

Every hook goes through ``fabric.call`` (one dispatch path) with ``trainer=`` and ``fabric=`` added; the
model's own hook methods run after the user's callbacks and before the late ones (``trainer_order``: 1 for
EarlyStopping, 2 for ModelCheckpoint), because the model joins the callbacks there while ``fit``/``validate``
run (``lifecycle``). The order in which hooks fire is the table in ``docs/trainer.md``.

Reading guide: ``_fit`` sets up and restores, ``_run_epoch`` is one epoch, ``_train_batches`` walks its
batches (skipping those a resumed run already trained on), ``_train_batch`` is one batch, and
``_after_step`` is the step boundary where validation, limits, stopping and preemption are decided.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader

from treadle.errors import add_note, caller_stacklevel
from treadle.fabric import Fabric
from treadle.loggers.base import metric_value
from treadle.trainer import checkpointing
from treadle.trainer.batches import check_loader, count_batches, numbered, set_sampler_epoch, skip
from treadle.trainer.config import (
    LIGHTNING_ALIASES,
    ClipAlgorithm,
    LoopSettings,
    parse_max_time,
    translate_lightning_arguments,
)
from treadle.trainer.data_position import DataPosition
from treadle.trainer.lifecycle import model_as_last_callback
from treadle.trainer.limits import Limits
from treadle.trainer.metrics import EpochMeans, batch_size_of, step_metrics
from treadle.trainer.model import StepRouter, check_model, loss_of
from treadle.trainer.optim import parse_optimizer_config, step_schedulers
from treadle.trainer.preemption import PreemptionFlag
from treadle.trainer.rng import TrainingRng
from treadle.trainer.state import Interval, Progress, SchedulerConfig

__all__ = ["Trainer"]


class Trainer:
    """Fit a plain ``nn.Module`` that has ``training_step``, ``configure_optimizers`` and optionally
    ``validation_step``, with callbacks, loggers, checkpoints and exact resume.

    Args:
        accelerator: passed to ``Fabric``.
        strategy: passed to ``Fabric``.
        devices: passed to ``Fabric``.
        num_nodes: passed to ``Fabric``.
        precision: passed to ``Fabric``.
        loggers: passed to ``Fabric``.
        callbacks: callback objects (any object with hook methods); see ``docs/trainer.md`` for the hooks.
        max_epochs: stop after this many epochs; -1 for no limit.
        max_steps: stop after this many optimizer steps; -1 for no limit.
        max_time: stop at the first step boundary after this long: seconds, a ``timedelta`` or
            ``"DD:HH:MM:SS"``; counted over resumed runs too.
        grad_accum_steps: step the optimizer every this many batches (and on an epoch's last batch).
        limit_train_batches: train on at most this many batches per epoch (int) or this fraction (float).
        limit_val_batches: validate on at most this many batches (int) or this fraction (float); 0 turns
            validation off.
        val_every_n_epochs: validate after every n-th epoch (None: never at epoch end).
        val_every_n_steps: also validate after every n-th optimizer step.
        gradient_clip_val: clip gradients to this before every optimizer step (unscaled first); None: no
            clipping.
        gradient_clip_algorithm: clip the gradients' total norm (``"norm"``) or each element (``"value"``).
        checkpoint_dir: folder of ``last.ckpt`` (written on SIGTERM, read by ``fit(ckpt_path="last")``).
        enable_progress_bar: add a ``ProgressBar`` after your callbacks unless you passed one.
        log_every_n_steps: log ``train_loss`` every this many optimizer steps.
        strict_hooks: make every unknown ``on_*`` method of a callback an error.
        lightning_names: Lightning's names for the same settings are accepted: ``accumulate_grad_batches``,
            ``check_val_every_n_epoch``, ``logger``. Its other arguments raise a ``TypeError`` saying what
            to write instead (``val_check_interval`` -> ``val_every_n_steps``, ...).

    Raises:
        ValueError, TypeError: an argument is invalid; the message names it and the fix.

    Example::

        trainer = Trainer(max_epochs=5, callbacks=[EarlyStopping("val_loss")], loggers=CSVLogger("logs"))
        trainer.fit(model, train_loader, val_loader)
        trainer.fit(model, train_loader, val_loader, ckpt_path="last")  # continue after a preemption
    """

    def __init__(
        self,
        accelerator: Any = "auto",
        strategy: Any = "auto",
        devices: int | str | Sequence[int] = "auto",
        num_nodes: int = 1,
        precision: Any = "32-true",
        callbacks: Any = None,
        loggers: Any = None,
        max_epochs: int | None = None,
        max_steps: int | None = None,
        max_time: Any = None,
        grad_accum_steps: int = 1,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        val_every_n_epochs: int | None = 1,
        val_every_n_steps: int | None = None,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: ClipAlgorithm = "norm",
        checkpoint_dir: str | os.PathLike[str] = "checkpoints",
        enable_progress_bar: bool = True,
        log_every_n_steps: int = 10,
        strict_hooks: bool = False,
        **lightning_names: Any,
    ) -> None:
        if lightning_names:
            given = {"grad_accum_steps": grad_accum_steps, "val_every_n_epochs": val_every_n_epochs,
                     "loggers": loggers}  # fmt: skip
            renamed = _lightning_arguments(lightning_names, given)
            grad_accum_steps = renamed.get("grad_accum_steps", grad_accum_steps)
            val_every_n_epochs = renamed.get("val_every_n_epochs", val_every_n_epochs)
            loggers = renamed.get("loggers", loggers)
        self._settings = LoopSettings(
            max_epochs, max_steps, parse_max_time(max_time), grad_accum_steps, limit_train_batches,
            limit_val_batches, val_every_n_epochs, val_every_n_steps, gradient_clip_val,
            gradient_clip_algorithm, checkpoint_dir, enable_progress_bar, log_every_n_steps,
        )  # fmt: skip
        callbacks = _as_list(callbacks)
        self._stateful = checkpointing.stateful_callbacks(callbacks)
        if self._settings.enable_progress_bar:
            from treadle.callbacks.progress import ProgressBar  # tqdm is optional: imported only when wanted

            if not any(isinstance(callback, ProgressBar) for callback in callbacks):
                callbacks.append(ProgressBar())
        try:
            self.fabric = Fabric(
                accelerator, strategy, devices, num_nodes, precision, callbacks, loggers, strict_hooks
            )
        except (ValueError, TypeError) as error:
            add_note(
                error, "(raised while the Trainer built its Fabric from the Trainer arguments of that name)"
            )
            raise
        self.model: nn.Module | None = None
        self.optimizers: list[Any] = []
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self.progress = Progress()
        self.batch_idx = 0
        self._accumulation_group = 1
        self.should_stop = False
        self.stop_reason: str | None = None
        self.callback_metrics: dict[str, float] = {}
        self.num_training_batches: int | float = 0
        self.num_val_batches: int | float = 0
        self._module: Any = None  # the set-up StepRouter around self.model: what steps are called through
        self._train_loader: DataLoader[Any] | None = None
        self._val_loader: DataLoader[Any] | None = None
        self._preemption = PreemptionFlag()
        self._rng = TrainingRng()
        self._data_position = DataPosition()
        self._pending_batches = 0  # batches whose gradients are accumulated but not yet stepped
        self._loss_sum: torch.Tensor | float = 0.0
        self._limits = Limits(self._settings)
        self._first_step = 0  # global_step when this fit started

    # --- what callbacks read ----------------------------------------------------------------------------
    @property
    def global_step(self) -> int:
        """Optimizer steps taken."""
        return self.progress.global_step

    @property
    def current_epoch(self) -> int:
        """The epoch in progress, from 0."""
        return self.progress.epoch

    @property
    def accumulation_group_size(self) -> int:
        """How many batches the current optimizer step accumulates: ``grad_accum_steps``, or fewer in an
        epoch's short last group. The loss of each batch is divided by it before ``backward``, so
        ``on_before_backward`` sees ``loss / accumulation_group_size``."""
        return self._accumulation_group

    @property
    def epoch_finished(self) -> bool:
        """Whether the current epoch ran to its end: all its batches, its validation and its epoch-interval
        schedulers.

        True during ``on_train_epoch_end`` of a complete epoch; False when that hook fires because training
        stopped mid-epoch (``max_steps``, ``max_time``, a stop request or SIGTERM), so callbacks that act on
        whole epochs (e.g. ``ModelCheckpoint``) can tell the two apart. A checkpoint saved while it is False
        resumes the same epoch at the next batch.
        """
        return self.progress.epoch_finished

    @property
    def preempted(self) -> bool:
        """Whether this ``fit`` stopped because of SIGTERM (after saving ``checkpoint_dir/last.ckpt``)."""
        return self._preemption.received and self.should_stop

    @property
    def max_epochs(self) -> int | None:
        """``Trainer(max_epochs=...)``: stop after this many epochs; -1 or None for no limit."""
        return self._settings.max_epochs

    @property
    def max_steps(self) -> int | None:
        """``Trainer(max_steps=...)``: stop after this many optimizer steps; -1 or None for no limit."""
        return self._settings.max_steps

    @property
    def grad_accum_steps(self) -> int:
        """``Trainer(grad_accum_steps=...)``: batches per optimizer step."""
        return self._settings.grad_accum_steps

    @property
    def checkpoint_dir(self) -> str:
        """The folder of ``last.ckpt`` (and ``ModelCheckpoint``'s default folder), as a ``str``."""
        # LoopSettings turned the argument into a str when it validated it.
        return cast(str, self._settings.checkpoint_dir)

    @property
    def lr_schedulers(self) -> list[Any]:
        """The scheduler objects, in the order ``configure_optimizers`` returned them."""
        return [config.scheduler for config in self.lr_scheduler_configs]

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is global rank 0 (the one that prints and writes shared files)."""
        return self.fabric.is_global_zero

    @property
    def global_rank(self) -> int:
        """This process's rank among all processes (0 to ``world_size - 1``)."""
        return self.fabric.global_rank

    @property
    def world_size(self) -> int:
        """How many processes train together."""
        return self.fabric.world_size

    @property
    def loggers(self) -> list[Any]:
        """The loggers given as ``Trainer(loggers=...)``, as a list (empty without loggers)."""
        return self.fabric.loggers

    @property
    def log_dir(self) -> str | None:
        """The first logger's folder, or None without loggers."""
        loggers = self.fabric.loggers
        return getattr(loggers[0], "log_dir", None) if loggers else None

    def request_stop(self, reason: str) -> None:
        """Ask training to stop at the next step boundary (all ranks stop at the same step)."""
        self.should_stop = True
        self.stop_reason = reason

    def log(self, name: str, value: Any) -> None:
        """Log one scalar at the current ``global_step`` and keep it in ``callback_metrics``."""
        self.log_dict({name: value})

    def log_dict(self, metrics: Mapping[str, Any]) -> None:
        """Log scalars (numbers or one-element tensors) to every logger and ``callback_metrics``.

        Raises:
            ValueError: a value is a tensor with more than one element.
            TypeError: a value is not a number.
        """
        numbers = {name: metric_value(name, value, "Trainer.log") for name, value in metrics.items()}
        self.callback_metrics.update({name: float(value) for name, value in numbers.items()})
        self.fabric.log_dict(numbers, step=self.progress.global_step)

    # --- entry points ------------------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        train_dataloaders: DataLoader[Any],
        val_dataloaders: DataLoader[Any] | None = None,
        ckpt_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Train ``model`` until a limit is reached or a callback stops it.

        Args:
            model: an ``nn.Module`` with ``training_step(batch, batch_idx)`` (a loss tensor, or a dict with
                ``"loss"``), ``configure_optimizers()`` and optionally ``validation_step(batch, batch_idx)``.
            train_dataloaders: the training ``DataLoader``.
            val_dataloaders: the validation ``DataLoader`` (needs ``validation_step``).
            ckpt_path: resume from this checkpoint; ``"last"`` means the newest ``last.ckpt`` in
                ``checkpoint_dir`` or in the folder of a ``ModelCheckpoint(save_last=True, dirpath=...)``.

        Raises:
            ValueError, TypeError: bad arguments, or a model method returned something unusable.
            Exception: whatever training raised, after ``on_exception`` and the loggers were told.
        """
        check_model(model, "fit", ("training_step", "configure_optimizers"))
        check_loader(train_dataloaders, "train_dataloaders")
        if val_dataloaders is not None:
            check_loader(val_dataloaders, "val_dataloaders")
            check_model(model, "fit", ("validation_step",), because="val_dataloaders was given")
        if ckpt_path is not None and not isinstance(ckpt_path, (str, os.PathLike)):
            raise TypeError(
                f"Trainer.fit(ckpt_path={ckpt_path!r}) must be a checkpoint file path (str or os.PathLike), "
                "'last' for the newest last.ckpt (checkpoint_dir or a ModelCheckpoint's folder), or None to start "
                "from scratch."
            )
        if not self._settings.has_limit:
            raise ValueError(
                "Trainer(max_epochs=None, max_steps=None, max_time=None): fit would never end unless a callback "
                "stops it. Set a limit (e.g. max_epochs=10), or max_epochs=-1 to train until stopped."
            )
        self.fabric.launch()
        self.should_stop, self.stop_reason = False, None
        with self._preemption.watch(), self._model_run(model), self.fabric.hook_arguments(trainer=self):
            self._fit(model, train_dataloaders, val_dataloaders, ckpt_path)

    def validate(self, model: nn.Module, dataloaders: DataLoader[Any]) -> dict[str, float]:
        """Run ``validation_step`` over ``dataloaders`` and return the averaged metrics (``val_<name>``)."""
        check_model(model, "validate", ("validation_step",))
        check_loader(dataloaders, "dataloaders")
        self.fabric.launch()
        with self._model_run(model), self.fabric.hook_arguments(trainer=self):
            self._setup_model(model)
            self._val_loader = self.fabric.setup_dataloaders(dataloaders, move_to_device=False).dataloader
            return self._run_validation()

    def save_checkpoint(self, path: str | os.PathLike[str], *, async_save: bool = False) -> None:
        """Write everything needed to resume exactly, atomically (call it on every rank).

        The checkpoint holds progress, model, optimizer, schedulers, grad scaler, RNG states, callback states
        and ``callback_metrics``; ``on_save_checkpoint(checkpoint)`` may add entries before it is written.
        With ``async_save=True`` the state is copied now and written in the background (see ``Fabric.save``).

        Raises:
            RuntimeError: no training run is set up yet.
        """
        if self.model is None or not self.optimizers:
            raise RuntimeError(
                "Trainer.save_checkpoint() saves a training run; call it during or after fit()."
            )
        if self._pending_batches:
            warnings.warn(
                f"Trainer.save_checkpoint({os.fspath(path)!r}) ran with the gradients of {self._pending_batches} "
                "accumulated batches not yet stepped; they are not saved, so a resumed run misses them. Save at "
                "optimizer-step boundaries (e.g. in on_train_batch_end when trainer.global_step changed).",
                UserWarning,
                stacklevel=2,
            )
        self.progress.time_elapsed = self._limits.elapsed()
        checkpoint: dict[str, Any] = {
            "treadle_trainer": checkpointing.CHECKPOINT_FORMAT,
            "progress": self.progress.state_dict(),
            "model": self.model,
            "optimizer": self.optimizers[0],
            "lr_schedulers": [config.scheduler.state_dict() for config in self.lr_scheduler_configs],
            "precision": self.fabric.precision.state_dict(),
            **self._rng.state_dict(),
            "callbacks": checkpointing.collect_callback_states(self._stateful),
            "callback_metrics": dict(self.callback_metrics),
            "cpu_threads": torch.get_num_threads(),  # CPU sums depend on it: a bitwise resume needs the same
            "data_position": self._data_position.state_dict(
                self._train_loader, self.progress.batches_done, self.fabric.world_size
            )
            if self._train_loader is not None
            else None,
        }
        self._call("on_save_checkpoint", checkpoint=checkpoint)
        self.fabric.save(path, checkpoint, async_save=async_save)

    # --- the loop ------------------------------------------------------------------------------------------
    def _fit(
        self, model: nn.Module, train: DataLoader[Any], val: DataLoader[Any] | None, ckpt_path: Any
    ) -> None:
        module = self._setup_model(model)
        optimizer, self.lr_scheduler_configs = parse_optimizer_config(cast(Any, model).configure_optimizers())
        self.optimizers = [self.fabric.setup_optimizers(optimizer)]
        # The Trainer iterates the plain DataLoader so that it, not a count of iterations, sets the sampler's
        # epoch: a resumed run must shuffle its first epoch as the interrupted run did.
        self._train_loader = self.fabric.setup_dataloaders(train, move_to_device=False).dataloader
        self._val_loader = (
            None if val is None else self.fabric.setup_dataloaders(val, move_to_device=False).dataloader
        )
        self.progress, self.callback_metrics = Progress(), {}
        self._rng.reset()
        self._data_position.end_epoch(self._train_loader)
        self._pending_batches, self._loss_sum = 0, 0.0
        self.num_training_batches = count_batches(
            self._train_loader, self._settings.limit_train_batches, "train"
        )
        if ckpt_path is not None:
            self._restore(ckpt_path)
        module.train()
        self._limits.start_clock(self.progress.time_elapsed)
        self._first_step = self.progress.global_step
        self._call("on_fit_start")
        self._call("on_train_start")
        if not 0 < self.progress.batches_done < self.num_training_batches:
            self._rng.apply_saved()  # mid-epoch, it is applied once the batches already seen are skipped
        self._sync_stop()
        while not self._training_done():
            self._run_epoch()
        self._call("on_train_end")
        self._call("on_fit_end")
        self.fabric.wait_for_saves()  # fit() returns with every checkpoint on disk

    def _run_epoch(self) -> None:
        self._call("on_train_epoch_start")
        complete = self._train_batches()
        self._rng.apply_saved()
        # After SIGTERM, last.ckpt records the epoch as unfinished and the resumed run finishes it.
        if complete and not self.preempted:
            if self._epoch_end_validation_due():
                self._run_validation()
            self._step_schedulers("epoch", self.progress.epoch + 1)
            self.progress.epoch_finished = True
        self._call("on_train_epoch_end")
        if not self.progress.epoch_finished:
            return  # stopped mid-epoch: the epoch stays unfinished
        self.progress.start_next_epoch()
        self._rng.end_epoch()
        self._data_position.end_epoch(self._train_loader)
        self._check_limits()
        self._sync_stop()

    def _train_batches(self) -> bool:
        """Run the epoch's remaining batches; True if they all ran (False if training stopped early)."""
        assert self._train_loader is not None
        start, limit = self.progress.batches_done, self.num_training_batches
        if start > limit:
            _warn_short_loader(start, limit, self.progress.epoch)
        if start >= limit:
            self._resume_step_boundary(is_last=True)
            return True
        set_sampler_epoch(self._train_loader, self.progress.epoch)
        # Creating the iterator draws shuffling seeds from the global RNG, so a run resumed mid-epoch goes back
        # to the state of this moment, creates the iterator again and skips the batches already trained on.
        self._rng.begin_epoch(resuming_mid_epoch=start > 0)
        batches = iter(self._train_loader)
        if not skip(batches, self._data_position.batches_to_skip(start)):
            _warn_short_loader(start, None, self.progress.epoch)
            return True
        self._rng.apply_saved()
        if self._resume_step_boundary(is_last=False) and self.should_stop:
            return False
        for batch_idx, batch, is_last in numbered(batches, start, limit):
            if self._train_batch(self.fabric.to_device(batch), batch_idx, is_last):
                self._after_step(is_last)
                if self.should_stop:
                    return is_last
        return True

    def _train_batch(self, batch: Any, batch_idx: int, is_last: bool) -> bool:
        """Forward, backward and, every ``grad_accum_steps`` batches, the optimizer step; True if it stepped."""
        self.batch_idx = batch_idx
        accum, total = self._settings.grad_accum_steps, self.num_training_batches
        # The last group of an epoch may be short: dividing by its real size gives each step a mean gradient.
        group = self._accumulation_group = int(min(accum, total - (batch_idx - batch_idx % accum)))
        self._call("on_train_batch_start", batch=batch, batch_idx=batch_idx)
        should_step = batch_idx % accum == accum - 1 or is_last
        # Under DDP, gradients are all-reduced only in the backward of the batch that steps.
        with self.fabric.no_backward_sync(self._module, enabled=not should_step):
            output = self._module("training_step", batch, batch_idx)
            loss = loss_of(output)
            self.fabric.backward(loss / group if group > 1 else loss)
        loss = loss.detach()
        self._loss_sum = self._loss_sum + loss
        self._pending_batches += 1
        if should_step:
            self._optimizer_step()
        self.progress.batches_done = batch_idx + 1
        self.progress.step_boundary_pending = should_step  # a checkpoint saved in the hook runs it on resume
        self._call("on_train_batch_end", loss=loss, output=output, batch=batch, batch_idx=batch_idx)
        return should_step

    def _optimizer_step(self) -> None:
        optimizer, settings = self.optimizers[0], self._settings
        if settings.gradient_clip_val is not None:
            limit = settings.gradient_clip_val
            if settings.gradient_clip_algorithm == "norm":
                self.fabric.clip_gradients(self._module, optimizer, max_norm=limit)
            else:
                self.fabric.clip_gradients(self._module, optimizer, clip_val=limit)
        optimizer.step()
        self._call("on_before_zero_grad", optimizer=optimizer.optimizer)
        optimizer.zero_grad()
        self.progress.global_step += 1
        if self.progress.global_step % settings.log_every_n_steps == 0:
            # Only now: reading the mean makes log_dict wait for the device, which other steps need not do.
            mean_loss = self._loss_sum / self._pending_batches
            self.log_dict({"train_loss": mean_loss, "epoch": self.progress.epoch})
        self._pending_batches, self._loss_sum = 0, 0.0
        self._step_schedulers("step", self.progress.global_step)

    def _after_step(self, is_last: bool) -> None:
        """The step boundary: validation by steps, limits, and the stop decision shared by all ranks."""
        self.progress.step_boundary_pending = False
        every = self._settings.val_every_n_steps
        # On the epoch's last batch, epoch-end validation (if due) follows at once: do not run it twice.
        epoch_end_follows = is_last and self._epoch_end_validation_due()
        if every is not None and self.progress.global_step % every == 0 and not epoch_end_follows:
            self._run_validation()
        self._check_limits()
        self._sync_stop()

    def _resume_step_boundary(self, is_last: bool) -> bool:
        """Run the step boundary a checkpoint was saved before (in ``on_train_batch_end``), as the interrupted
        run did right after saving; True if there was one."""
        if not self.progress.step_boundary_pending:
            return False
        self._after_step(is_last)
        return True

    def _epoch_end_validation_due(self) -> bool:
        every = self._settings.val_every_n_epochs
        return every is not None and (self.progress.epoch + 1) % every == 0

    def _run_validation(self) -> dict[str, float]:
        loader, module = self._val_loader, self._module
        if loader is None or module is None:
            return {}
        limit = self.num_val_batches = count_batches(loader, self._settings.limit_val_batches, "val")
        if limit == 0:
            return {}
        was_training = module.training
        module.eval()
        means = EpochMeans()
        # Validation must not change what training draws next, so that how often it runs never changes the
        # trained weights, and a resumed run may repeat or skip it.
        with self._rng.validation():
            self._call("on_validation_start")
            self._call("on_validation_epoch_start")
            with torch.no_grad():
                for batch_idx, raw, _ in numbered(iter(loader), 0, limit):
                    batch = self.fabric.to_device(raw)
                    self._call("on_validation_batch_start", batch=batch, batch_idx=batch_idx)
                    output = module("validation_step", batch, batch_idx)
                    means.update(step_metrics(output, "val_", "validation_step"), batch_size_of(batch))
                    self._call("on_validation_batch_end", output=output, batch=batch, batch_idx=batch_idx)
            metrics = means.compute(self.fabric)
            self.log_dict(metrics)
            self._call("on_validation_epoch_end")
            self._call("on_validation_end")
        module.train(was_training)
        return metrics

    # --- stopping ------------------------------------------------------------------------------------------
    def _training_done(self) -> bool:
        self._check_limits()
        return self.should_stop

    def _check_limits(self) -> None:
        reason = self._limits.reached(self.progress)
        if reason is not None:
            self.request_stop(self.stop_reason or reason)

    def _sync_stop(self) -> None:
        """Agree across ranks on stopping, and on SIGTERM save ``last.ckpt`` first."""
        fabric = self.fabric
        # One collective per step in the common case; the second only once someone wants to stop.
        if not fabric.all_reduce_bool(self.should_stop or self._preemption.received, "any"):
            return
        if fabric.all_reduce_bool(self._preemption.received, "any"):
            self._preemption.received = True
            path = os.path.join(self.checkpoint_dir, "last.ckpt")
            self.save_checkpoint(path)
            self.request_stop(f"preempted (SIGTERM): saved {path}; resume with fit(..., ckpt_path='last')")
        elif not self.should_stop:
            self.request_stop("stop requested on another rank")

    # --- setup, restore, hooks -----------------------------------------------------------------------------
    def _setup_model(self, model: nn.Module) -> Any:
        if self.model is not model or self._module is None:
            self._module = self.fabric.setup(StepRouter(model))
            self.model = model
        return self._module

    def _restore(self, ckpt_path: str | os.PathLike[str]) -> None:
        path = checkpointing.resolve_path(ckpt_path, self.checkpoint_dir, self._stateful.values())
        if path is None:
            return
        checkpoint = self.fabric.load(path)
        checkpointing.check_trainer_checkpoint(checkpoint, path)
        self._call("on_load_checkpoint", checkpoint=checkpoint)
        assert self.model is not None
        checkpointing.restore_objects(
            checkpoint, path, self.model, self.optimizers[0], self.lr_scheduler_configs, self.fabric.precision
        )
        checkpointing.load_callback_states(self._stateful, checkpoint["callbacks"], path)
        self.progress = Progress.from_state_dict(checkpoint["progress"])
        if self.progress.epoch_finished:  # saved in on_train_epoch_end: nothing of that epoch is left to do
            self.progress.start_next_epoch()
        self.callback_metrics = {str(k): float(v) for k, v in checkpoint.get("callback_metrics", {}).items()}
        self._rng.load_state_dict(checkpoint)
        assert self._train_loader is not None
        self.progress.batches_done, self._train_loader = self._data_position.restore(
            checkpoint.get("data_position"),
            self._train_loader,
            batches_done=self.progress.batches_done,
            epoch=self.progress.epoch,
            world_size=self.fabric.world_size,
            limited=self._settings.limit_train_batches is not None,
            path=path,
        )
        threads = checkpoint.get("cpu_threads")
        if isinstance(threads, int) and threads != torch.get_num_threads():
            warnings.warn(
                f"Checkpoint {path!r} was written with {threads} CPU threads, this run has "
                f"{torch.get_num_threads()}: CPU results then differ in the last bits, so the resumed run will "
                f"not match the uninterrupted one exactly. Call torch.set_num_threads({threads}) (or set "
                f"OMP_NUM_THREADS={threads}) before fit for a bitwise-exact resume.",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )

    def _step_schedulers(self, interval: Interval, count: int) -> None:
        # Resumed before this fit's first optimizer step, torch would wrongly warn that the scheduler steps
        # before the optimizer ever did: it did, in the run that wrote the checkpoint.
        resumed = self.progress.global_step == self._first_step > 0
        step_schedulers(
            self.lr_scheduler_configs, interval, count, self.callback_metrics, quiet_order_warning=resumed
        )

    def _call(self, hook: str, **kwargs: Any) -> None:
        self.fabric.call(hook, trainer=self, fabric=self.fabric, **kwargs)

    def _model_run(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        return model_as_last_callback(self.fabric, model, self._call, interrupted=lambda: self.preempted)


def _warn_short_loader(position: int, length: float | None, epoch: int) -> None:
    has = "ran out sooner" if length is None else f"has {length:g}"
    warnings.warn(
        f"Resuming epoch {epoch} after batch {position}, but the training loader {has}: it is not the loader "
        "the checkpoint was written with (smaller dataset, larger batch size or limit_train_batches?). The "
        "rest of that epoch is skipped and training goes on with the next one.",
        UserWarning,
        stacklevel=caller_stacklevel(),
    )


def _as_list(callbacks: Any) -> list[Any]:
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


def _lightning_arguments(lightning_names: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``Trainer(**lightning_names)`` as treadle arguments; an error when the treadle name was passed too."""
    parameters = inspect.signature(Trainer.__init__).parameters
    names = [name for name in parameters if name not in ("self", "lightning_names")]
    renamed = translate_lightning_arguments(lightning_names, names)
    for name in renamed:
        if given[name] != parameters[name].default:
            alias = next(alias for alias in lightning_names if LIGHTNING_ALIASES.get(alias) == name)
            raise TypeError(f"Trainer({name}=..., {alias}=...) set the same thing twice; pass one of them.")
    return renamed
