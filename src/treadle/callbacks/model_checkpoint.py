"""ModelCheckpoint: save checkpoints on a schedule, keep the best k, and a ``last.ckpt`` to resume from."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

from treadle.callbacks.arguments import check_bool
from treadle.callbacks.hooks import Callback
from treadle.callbacks.progress import write_line
from treadle.files import atomic_link, atomic_open
from treadle.loggers.base import metric_value

__all__ = ["ModelCheckpoint"]

Mode = Literal["min", "max"]
_MODES = ("min", "max")
LAST_NAME = "last.ckpt"


class ModelCheckpoint(Callback):
    """Saves checkpoints every ``every_n_epochs`` epochs or ``every_n_steps`` optimizer steps, keeps the
    ``save_top_k`` best by ``monitor`` (or the most recent ones without a monitor), deletes the files that
    drop out, and keeps ``last.ckpt`` pointing at the newest state.

    Every file is written atomically (a reader sees the old file or the complete new one), and this
    callback's own state (which files are the best, their scores, the folder they are in) is part of each
    checkpoint, so a resumed run keeps ranking and deleting correctly. A resumed run that saves to another
    folder starts ranking afresh there and never deletes the earlier folder's files. A file name that is
    already taken (kept by this callback, or left by an earlier run) gets a version suffix instead of being
    overwritten: ``epoch=0-v1.ckpt``, ``epoch=0-v2.ckpt``, ...; only ``last.ckpt`` is replaced in place.

    In the Trainer, files go to ``trainer.checkpoint_dir`` by default and are written with
    ``trainer.save_checkpoint``, so ``last.ckpt`` is what ``fit(..., ckpt_path="last")`` resumes from.
    The monitored value is read from ``trainer.callback_metrics`` (validation runs before
    ``on_train_epoch_end``, so its metrics are fresh there). When training stops mid-epoch (``max_steps``,
    ``max_time``, a stop request), that unfinished epoch is not saved as a ranked file (``trainer.epoch_finished``
    is False); with ``save_last``, ``last.ckpt`` is written at ``on_train_end`` instead and resumes the epoch
    at its next batch. With ``save_last``, ``last.ckpt`` is also refreshed at every finished epoch's end and
    at ``on_train_end`` whenever the step moved on since the last save, whatever the schedule, so it always
    holds the final state. After SIGTERM the Trainer itself writes ``trainer.checkpoint_dir/last.ckpt``.

    In a Fabric-only loop, give ``dirpath`` and fire the hooks with what to save:
    ``fabric.call("on_train_epoch_end", fabric=fabric, state=state, epoch=epoch, step=step,
    metrics={"val_loss": v})``; files are written with ``fabric.save(path, state)``. Put the callback itself
    into ``state`` (it has ``state_dict``) to checkpoint its bookkeeping too, including its own step count
    when the hooks get no ``step=``.

    Args:
        dirpath: the folder; default ``trainer.checkpoint_dir`` (required in a Fabric-only loop).
        filename: a ``str.format`` template; ``{epoch}`` (from 0), ``{step}`` and any logged metric, e.g.
            ``"{epoch}-{val_loss:.3f}"``. ``.ckpt`` is appended unless it ends with ``.ckpt`` or ``.pt``.
        monitor: the metric that ranks checkpoints; None ranks them by recency.
        mode: ``"min"`` if a lower ``monitor`` is better, ``"max"`` if higher is better.
        save_top_k: how many ranked files to keep; -1 keeps all, 0 writes none (only ``last.ckpt``).
        save_last: also keep ``last.ckpt``, the newest state (a hard link to the newest ranked file when
            possible, so it costs no second write), refreshed at each epoch's end and when training ends.
        every_n_steps: save every this many optimizer steps (at ``on_train_batch_end``).
        every_n_epochs: save at the end of every this many epochs; default 1 unless ``every_n_steps`` is
            set; 0 disables epoch saves.
        name: distinguishes the checkpoint state of several ModelCheckpoint callbacks in one run.
        verbose: print a line for each save (global rank 0).
        async_save: write files in the background (``Fabric.save(async_save=True)``): training waits only
            for the copy of the state. ``last.ckpt`` is linked and displaced files deleted once the new file
            is on disk, so the folder never holds fewer than ``save_top_k`` complete files.

    Raises:
        ValueError: an argument is out of range; the message names it.

    Example::

        checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=2, filename="{epoch}-{val_loss:.3f}")
        trainer = Trainer(max_epochs=10, callbacks=[checkpoint])
        trainer.fit(model, train_loader, val_loader)
        print(checkpoint.best_model_path, checkpoint.best_model_score)
    """

    # In the Trainer, after the model's hooks and EarlyStopping: a checkpoint then holds the metrics the
    # model logged at epoch end and every callback's state after its update.
    trainer_order = 2

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str = "epoch={epoch}-step={step}",
        monitor: str | None = None,
        mode: Mode = "min",
        save_top_k: int = 1,
        save_last: bool = True,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        name: str | None = None,
        verbose: bool = False,
        async_save: bool = False,
    ) -> None:
        if not isinstance(filename, str) or not filename:
            raise ValueError(f"ModelCheckpoint(filename={filename!r}) must be a non-empty template string.")
        if os.sep in filename or (os.altsep and os.altsep in filename):
            raise ValueError(
                f"ModelCheckpoint(filename={filename!r}) must be a file name, not a path: put the folder in "
                "dirpath=..."
            )
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(
                f"ModelCheckpoint(monitor={monitor!r}) must name a metric, e.g. 'val_loss', or be None."
            )
        if mode not in _MODES:
            raise ValueError(f"ModelCheckpoint(mode={mode!r}) is not a choice. Choose one of: 'min', 'max'.")
        if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
            raise ValueError(
                f"ModelCheckpoint(save_top_k={save_top_k!r}) must be an int >= -1 (-1 keeps every file, 0 none)."
            )
        for argument, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"ModelCheckpoint({argument}={value!r}) must be a non-negative int or None.")
        if every_n_epochs is None:
            every_n_epochs = 0 if every_n_steps else 1
        if not every_n_steps and not every_n_epochs:
            raise ValueError(
                f"ModelCheckpoint(every_n_steps={every_n_steps!r}, every_n_epochs={every_n_epochs!r}) would never "
                "save. Set every_n_epochs=1 to save after each epoch, or every_n_steps=N to save every N steps."
            )
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.filename = filename
        self.monitor = monitor
        self.mode: Mode = (
            mode if monitor is not None else "max"
        )  # without a monitor, newer (higher step) wins
        self.save_top_k = save_top_k
        self.save_last = check_bool("ModelCheckpoint", "save_last", save_last)
        self.every_n_steps = every_n_steps or 0
        self.every_n_epochs = every_n_epochs
        self.verbose = check_bool("ModelCheckpoint", "verbose", verbose)
        self.async_save = check_bool("ModelCheckpoint", "async_save", async_save)
        self._name = name
        # (path, score) of the files kept, best first. Without a monitor the score is the step.
        self._kept: list[tuple[str, float]] = []
        self.last_model_path: str | None = None
        self._last_saved_step: int | None = None
        self._loaded_dirpath: str | None = None
        self._saved_dirpath: str | None = None  # absolute folder of this run's saves, once it has saved
        self._fabric: Any = None
        self._own_step = 0  # batches seen in a Fabric-only loop that passes no step=
        self._stopped_mid_epoch = False  # the Trainer ended an epoch early, so on_train_end writes last.ckpt
        self._adopted = False  # whether this run has ranked the files a killed earlier run left unrecorded

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint: the class name, plus ``[name]`` if named."""
        base = type(self).__qualname__
        return base if self._name is None else f"{base}[{self._name}]"

    @property
    def best_model_path(self) -> str | None:
        """The best file kept (the newest without a monitor), or None before the first save."""
        return self._kept[0][0] if self._kept else None

    @property
    def best_model_score(self) -> float | None:
        """The monitored value of ``best_model_path`` (None without a monitor)."""
        return self._kept[0][1] if self._kept and self.monitor is not None else None

    @property
    def best_k_models(self) -> dict[str, float]:
        """The files kept and their scores, best first."""
        return dict(self._kept)

    # --- hooks -------------------------------------------------------------------------------------------
    def on_after_setup(self, fabric: Any = None) -> None:
        if fabric is not None:
            self._fabric = fabric

    def on_train_batch_end(
        self,
        trainer: Any = None,
        fabric: Any = None,
        state: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
        if trainer is None and step is None:
            self._own_step += 1
        if not self.every_n_steps:
            return
        target = _Target.resolve(self, trainer, fabric, state, metrics, epoch, step)
        if target.step > 0 and target.step % self.every_n_steps == 0 and target.step != self._last_saved_step:
            self._save(target)

    def on_train_epoch_end(
        self,
        trainer: Any = None,
        fabric: Any = None,
        state: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
        if trainer is not None and not trainer.epoch_finished:
            # Training stopped mid-epoch (max_steps, max_time, a stop request, SIGTERM): there is no epoch
            # result to rank, and validation may not have run yet. last.ckpt is written in on_train_end.
            self._stopped_mid_epoch = True
            return
        current_epoch = trainer.current_epoch if trainer is not None else (0 if epoch is None else int(epoch))
        scheduled = self.every_n_epochs > 0 and (current_epoch + 1) % self.every_n_epochs == 0
        if not scheduled and (not self.save_last or (trainer is None and state is None)):
            # Only last.ckpt would be refreshed, and a Fabric-only loop that passes no state= has nothing to
            # save: other callbacks may fire this hook without knowing about checkpoints.
            return
        target = _Target.resolve(self, trainer, fabric, state, metrics, epoch, step)
        if target.step == self._last_saved_step:
            return
        if scheduled:
            self._save(target)
        else:
            self._save_last(target, "end of epoch")

    def on_train_end(self, trainer: Any = None) -> None:
        stopped_mid_epoch, self._stopped_mid_epoch = self._stopped_mid_epoch, False
        if trainer is None or not self.save_last or trainer.preempted:
            return  # after SIGTERM the Trainer has just written checkpoint_dir/last.ckpt itself
        target = _Target.resolve(self, trainer, None, None, None, None, None)
        if target.step != self._last_saved_step:
            self._save_last(target, "training stopped mid-epoch" if stopped_mid_epoch else "end of training")

    # --- saving ------------------------------------------------------------------------------------------
    def _save_last(self, target: _Target, why: str) -> None:
        self._forget_other_folder(target.dirpath)
        self.last_model_path = os.path.join(target.dirpath, LAST_NAME)
        self._last_saved_step = target.step
        target.save(self.last_model_path, self.async_save)
        if self.verbose and target.is_global_zero:
            write_line(f"ModelCheckpoint: saved {LAST_NAME} ({why})")

    def _save(self, target: _Target) -> None:
        self._forget_other_folder(target.dirpath)
        self._adopt_unrecorded(target)
        score = self._score(target)
        path = self._free_path(target.dirpath, self._format_name(target))
        keep, displaced = self._rank(path, score)
        if target.world_size > 1:
            # Ranks may see different metrics (a loop that does not reduce them), and saving is collective:
            # every rank takes rank 0's file name, score and decision, so their bookkeeping stays identical.
            path, score, keep, displaced = target.broadcast((path, score, keep, displaced))
        # The bookkeeping is updated before writing, so that the checkpoint holds the state that
        # includes itself.
        owned = [*self._kept, (path, score)] if keep else []
        if keep:
            self._kept = [(p, s) for p, s in self._kept if p != path and p not in displaced] + [(path, score)]
            self._kept.sort(key=lambda item: item[1], reverse=self.mode == "max")
            if target.is_global_zero:
                # Before the new file exists: a kill from here on leaves files the list still names.
                self._write_ranked_list(owned)
        last_path = os.path.join(target.dirpath, LAST_NAME)
        if self.save_last:
            self.last_model_path = last_path
        self._last_saved_step = target.step
        if keep:
            target.save(path, self.async_save)
        if self.save_last and keep and self.async_save:
            # The file is still being written: rank 0's writing thread links (or copies) it afterwards.
            if target.is_global_zero:
                target.after_save(lambda: atomic_link(path, last_path) or _atomic_copy(path, last_path))
        elif self.save_last:
            # A hard link renamed over last.ckpt makes it the same file without writing it twice.
            linked = keep and target.is_global_zero and atomic_link(path, last_path)
            if target.world_size > 1:
                linked = target.broadcast(linked)
            if not linked:
                target.save(last_path, self.async_save)
        if target.is_global_zero:
            # Displaced files go once the new one is on disk (at once for synchronous saves). The writing
            # thread gets its own copy of the ranking: the next save changes self._kept meanwhile.
            kept = list(self._kept)
            target.after_save(lambda: self._delete_displaced(displaced, kept))
        if self.verbose and target.is_global_zero:
            what = os.path.basename(path) if keep else LAST_NAME
            score_text = f" ({self.monitor}={score:.6g})" if self.monitor is not None else ""
            write_line(f"ModelCheckpoint: saved {what}{score_text}")

    def _delete_displaced(self, displaced: list[str], kept: list[tuple[str, float]]) -> None:
        for old in displaced:
            # Only this run's folder is ours to clean: a file elsewhere (recorded by an older checkpoint)
            # leaves the ranking but stays on disk.
            if os.path.dirname(os.path.abspath(old)) != self._saved_dirpath:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)
        if displaced:
            self._write_ranked_list(kept)

    def _ranked_list_path(self) -> str:
        assert self._saved_dirpath is not None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.state_key)
        return os.path.join(self._saved_dirpath, f".{safe}.ranked.json")

    def _write_ranked_list(self, files: list[tuple[str, float]]) -> None:
        # The ranked files this callback wrote into its folder, kept beside them: a run killed between
        # writing a new file and deleting the one it displaced (or before last.ckpt recorded it) resumes from
        # a state that does not know that file; the list lets the resumed run rank it instead of leaking it.
        record = {"monitor": self.monitor, "mode": self.mode, "files": [[p, sc] for p, sc in files]}
        with contextlib.suppress(OSError), atomic_open(self._ranked_list_path(), "w") as file:
            json.dump(record, file)

    def _adopt_unrecorded(self, target: _Target) -> None:
        """Once per run: rank again the files a killed earlier run wrote but its checkpoint did not record,
        deleting those beyond ``save_top_k``."""
        if self._adopted:
            return
        self._adopted = True
        found: list[tuple[str, float]] = []
        if target.is_global_zero:
            found = self._unrecorded_files()
        if target.world_size > 1:
            found = target.broadcast(found)
        if not found:
            return
        ranked = sorted(self._kept + found, key=lambda item: item[1], reverse=self.mode == "max")
        limit = len(ranked) if self.save_top_k == -1 else self.save_top_k
        self._kept, extra = ranked[:limit], ranked[limit:]
        if target.is_global_zero:
            for path, _ in extra:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            self._write_ranked_list(self._kept)

    def _unrecorded_files(self) -> list[tuple[str, float]]:
        try:
            with open(self._ranked_list_path(), encoding="utf-8") as file:
                record = json.load(file)
        except (OSError, ValueError):
            return []
        if not isinstance(record, dict) or (record.get("monitor"), record.get("mode")) != (self.monitor, self.mode):
            return []
        known = {os.path.abspath(path) for path, _ in self._kept}
        found = []
        for entry in record.get("files", []):
            path, score = str(entry[0]), float(entry[1])
            inside = os.path.dirname(os.path.abspath(path)) == self._saved_dirpath
            if inside and os.path.abspath(path) not in known and os.path.isfile(path):
                found.append((path, score))
        return found

    def _forget_other_folder(self, dirpath: str) -> None:
        self._saved_dirpath = os.path.abspath(dirpath)
        loaded, self._loaded_dirpath = self._loaded_dirpath, None
        if loaded is None or os.path.abspath(loaded) == self._saved_dirpath:
            return
        if self._kept:
            warnings.warn(
                f"ModelCheckpoint: the resumed checkpoint kept its files in {loaded!r}, but this run saves to "
                f"{dirpath!r}; those files are left alone and ranking starts afresh here.",
                UserWarning,
                stacklevel=3,
            )
        self._kept = []

    def _score(self, target: _Target) -> float:
        if self.monitor is None:
            return float(target.step)
        if self.monitor not in target.metrics:
            available = ", ".join(sorted(target.metrics)) or "none"
            raise RuntimeError(
                f"ModelCheckpoint(monitor={self.monitor!r}) found no value for {self.monitor!r} at step "
                f"{target.step} (available: {available}). Log it before checkpoints are saved, or pass "
                "metrics={...} when you fire the hook in your own loop."
            )
        value = float(metric_value(self.monitor, target.metrics[self.monitor]))
        if math.isnan(value):
            return math.inf if self.mode == "min" else -math.inf  # never better than a real value
        return value

    def _rank(self, path: str, score: float) -> tuple[bool, list[str]]:
        """Whether to write ``path`` as a ranked file, and which kept files it displaces."""
        if self.save_top_k == 0:
            return False, []
        # Sorting is stable and the candidate comes last, so on a tie the file already kept stays.
        ranked = [(p, s) for p, s in self._kept if p != path] + [(path, score)]
        ranked.sort(key=lambda item: item[1], reverse=self.mode == "max")
        if self.save_top_k == -1:
            return True, []
        kept = {p for p, _ in ranked[: self.save_top_k]}
        if path not in kept:
            return False, []
        return True, [p for p, _ in ranked[self.save_top_k :]]

    def _free_path(self, dirpath: str, name: str) -> str:
        """``dirpath/name``, or ``name-vN`` with the first N that is neither kept nor on disk."""
        path = os.path.join(dirpath, name)
        kept = {os.path.abspath(p) for p, _ in self._kept}
        stem, extension = os.path.splitext(name)
        version = 0
        # Writing over a taken name would silently replace a kept file (maybe a better one) or a file of an
        # earlier run that this callback does not own.
        while os.path.abspath(path) in kept or os.path.exists(path):
            version += 1
            path = os.path.join(dirpath, f"{stem}-v{version}{extension}")
        return path

    def _format_name(self, target: _Target) -> str:
        values = {name: float(metric_value(name, value)) for name, value in target.metrics.items()}
        values.update(epoch=target.epoch, step=target.step)
        try:
            name = self.filename.format(**values)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"ModelCheckpoint(filename={self.filename!r}) could not be filled in ({error!r}). It may use "
                f"{{epoch}}, {{step}} and the logged metrics: {', '.join(sorted(target.metrics)) or 'none yet'}."
            ) from None
        return name if name.endswith((".ckpt", ".pt")) else name + ".ckpt"

    # --- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the folder saved to (absolute), monitor and mode, the files kept with
        their scores, the last save, and the step count of a Fabric-only loop."""
        dirpath = self._saved_dirpath
        if dirpath is None and self.dirpath is not None:
            dirpath = os.path.abspath(self.dirpath)
        return {
            "dirpath": dirpath,
            "monitor": self.monitor,
            "mode": self.mode,
            "kept": [list(item) for item in self._kept],
            "last_model_path": self.last_model_path,
            "last_saved_step": self._last_saved_step,
            "own_step": self._own_step,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue ranking from ``state_dict()``; files that no longer exist are forgotten with a warning, and
        a state of another monitor or mode is ignored with one."""
        # Checkpoints written before "own_step" was saved: the last saved step is where that count stood.
        self._own_step = int(state_dict.get("own_step", state_dict.get("last_saved_step") or 0))
        if state_dict.get("monitor") != self.monitor or state_dict.get("mode") != self.mode:
            warnings.warn(
                f"ModelCheckpoint: the checkpoint ranked files by monitor={state_dict.get('monitor')!r}, "
                f"mode={state_dict.get('mode')!r}, but this one uses monitor={self.monitor!r}, mode={self.mode!r}; "
                "the earlier files are not ranked or deleted by this run.",
                UserWarning,
                stacklevel=2,
            )
            return
        kept = [(str(path), float(score)) for path, score in state_dict.get("kept", [])]
        missing = [path for path, _ in kept if not os.path.exists(path)]
        if missing:
            warnings.warn(
                f"ModelCheckpoint: {len(missing)} checkpoint file(s) recorded as kept no longer exist and are "
                f"forgotten: {missing}",
                UserWarning,
                stacklevel=2,
            )
        self._kept = [(path, score) for path, score in kept if path not in missing]
        self.last_model_path = state_dict.get("last_model_path")
        self._last_saved_step = state_dict.get("last_saved_step")
        loaded_dirpath = state_dict.get("dirpath")
        if loaded_dirpath is None:
            # Checkpoints that stored no folder (the Trainer's default one): it is where the files were.
            recorded = [path for path, _ in kept] + [self.last_model_path or ""]
            loaded_dirpath = next((os.path.dirname(path) for path in recorded if path), None)
        self._loaded_dirpath = None if loaded_dirpath is None else os.path.abspath(loaded_dirpath)


class _Target:
    """Where and how one save happens: the Trainer's or a Fabric-only loop's view, resolved once."""

    def __init__(
        self,
        dirpath: str,
        epoch: int,
        step: int,
        metrics: Mapping[str, Any],
        save: Callable[[str, bool], None],
        fabric: Any,
    ) -> None:
        self.dirpath = dirpath
        self.epoch = epoch
        self.step = step
        self.metrics = metrics
        self.save = save
        self._fabric = fabric
        self.world_size = int(getattr(fabric, "world_size", 1)) if fabric is not None else 1
        self.is_global_zero = bool(getattr(fabric, "is_global_zero", True)) if fabric is not None else True

    def broadcast(self, obj: Any) -> Any:
        return self._fabric.broadcast(obj, 0)

    def after_save(self, follow_up: Callable[[], object]) -> None:
        after = getattr(self._fabric, "after_save", None)
        if callable(after):
            after(follow_up)
        else:
            follow_up()

    @staticmethod
    def resolve(
        callback: ModelCheckpoint,
        trainer: Any,
        fabric: Any,
        state: Mapping[str, Any] | None,
        metrics: Mapping[str, Any] | None,
        epoch: int | None,
        step: int | None,
    ) -> _Target:
        if trainer is not None:
            dirpath = callback.dirpath if callback.dirpath is not None else trainer.checkpoint_dir
            return _Target(
                dirpath,
                trainer.current_epoch,
                trainer.global_step,
                trainer.callback_metrics,
                lambda path, background: trainer.save_checkpoint(path, async_save=background),
                trainer.fabric,
            )
        fabric = fabric if fabric is not None else callback._fabric
        if fabric is None or state is None:
            raise RuntimeError(
                "ModelCheckpoint in a loop without a Trainer needs `fabric=` and `state=` with the hook, e.g. "
                "fabric.call('on_train_epoch_end', fabric=fabric, state={'model': model, 'optimizer': optimizer}, "
                "epoch=epoch, step=step)."
            )
        if callback.dirpath is None:
            raise ValueError(
                "ModelCheckpoint(dirpath=None) only has a default inside the Trainer (trainer.checkpoint_dir). "
                "Pass the folder, e.g. ModelCheckpoint(dirpath='checkpoints')."
            )
        saved_state = state

        def save(path: str, background: bool) -> None:
            fabric.save(path, saved_state, async_save=background)

        return _Target(
            callback.dirpath,
            0 if epoch is None else int(epoch),
            callback._own_step if step is None else int(step),
            metrics or {},
            save,
            fabric,
        )


def _atomic_copy(source: str, target: str) -> bool:
    """Copy ``source`` over ``target`` atomically (where hard links are not possible)."""
    with open(source, "rb") as reader, atomic_open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 22)
    return True
