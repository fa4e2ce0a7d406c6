"""Trainer construction, fit/validate arguments, logging and limits."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from tests.trainer.models import Classifier, MemoryLogger, loader, parameters_of, trainer
from treadle.trainer import Trainer


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_epochs": 0}, r"max_epochs=0"),
        ({"max_epochs": 1.5}, r"max_epochs=1.5"),
        ({"max_steps": -2}, r"max_steps=-2"),
        ({"max_time": "1h"}, r"max_time='1h'.*DD:HH:MM:SS"),
        ({"max_time": -1}, r"max_time=-1"),
        ({"grad_accum_steps": 0}, r"grad_accum_steps=0"),
        ({"limit_train_batches": 0}, r"limit_train_batches=0"),
        ({"limit_train_batches": 1.5}, r"limit_train_batches=1.5"),
        ({"limit_val_batches": -1}, r"limit_val_batches=-1"),
        ({"val_every_n_epochs": 0}, r"val_every_n_epochs=0"),
        ({"val_every_n_steps": True}, r"val_every_n_steps=True"),
        ({"gradient_clip_val": 0.0}, r"gradient_clip_val=0.0"),
        ({"gradient_clip_algorithm": "l2"}, r"gradient_clip_algorithm='l2'.*'norm'.*'value'"),
        ({"log_every_n_steps": 0}, r"log_every_n_steps=0"),
        ({"enable_progress_bar": "yes"}, r"enable_progress_bar='yes'"),
        ({"checkpoint_dir": 3}, r"checkpoint_dir=3"),
        ({"precision": "fp16"}, r"precision"),
        ({"accelerator": "tpu"}, r"accelerator"),
    ],
)
def test_invalid_arguments_name_the_argument_and_the_fix(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        Trainer(**{"accelerator": "cpu", "enable_progress_bar": False, **kwargs})


def test_max_time_forms() -> None:
    assert trainer(max_time=90)._settings.max_time == 90.0
    assert trainer(max_time=datetime.timedelta(minutes=2))._settings.max_time == 120.0
    assert trainer(max_time="00:01:00:30")._settings.max_time == 3630.0


def test_fit_needs_a_limit() -> None:
    with pytest.raises(ValueError, match="never end"):
        trainer(max_epochs=None).fit(Classifier(), loader())


def test_fit_checks_model_and_loaders() -> None:
    with pytest.raises(TypeError, match="torch.nn.Module"):
        trainer().fit("model", loader())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="training_step"):
        trainer().fit(nn.Linear(2, 2), loader())
    with pytest.raises(TypeError, match="train_dataloaders must be a torch.utils.data.DataLoader"):
        trainer().fit(Classifier(), [1, 2])  # type: ignore[arg-type]

    class NoValidation(Classifier):
        validation_step = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="validation_step because val_dataloaders was given"):
        trainer().fit(NoValidation(), loader(), loader())


def test_training_step_may_return_a_dict_and_bad_returns_are_explained() -> None:
    class DictLoss(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"loss": super().training_step(batch, batch_idx), "extra": 1}

    trainer().fit(DictLoss(), loader())

    class NoLoss(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"los": super().training_step(batch, batch_idx)}

    with pytest.raises(TypeError, match=r"dict with keys \['los'\].*'loss'"):
        trainer().fit(NoLoss(), loader())

    class Detached(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return super().training_step(batch, batch_idx).detach()

    with pytest.raises(ValueError, match="does not require grad"):
        trainer().fit(Detached(), loader())


def test_logged_values_reach_loggers_and_callback_metrics() -> None:
    logger = MemoryLogger()

    class LogsExtra:
        def on_train_batch_end(self, trainer: Any, batch_idx: int) -> None:
            trainer.log("custom", torch.tensor(batch_idx))
            trainer.log_dict({"twice": 2 * batch_idx})

    fitted = trainer(loggers=logger, callbacks=[LogsExtra()], max_epochs=2, log_every_n_steps=4)
    fitted.fit(Classifier(), loader(), loader(n=16))
    assert [step for step, _ in logger.values("train_loss")] == [4, 8, 12, 16]
    assert [step for step, _ in logger.values("val_loss")] == [8, 16]
    assert logger.values("custom")[-1] == (16, 7.0)
    assert set(fitted.callback_metrics) >= {"train_loss", "val_loss", "val_acc", "custom", "twice", "epoch"}
    assert all(type(value) is float for value in fitted.callback_metrics.values())
    assert logger.statuses == ["success"]
    with pytest.raises(ValueError, match=r"Trainer.log\('bad', ...\) got a tensor of shape \(3,\)"):
        fitted.log("bad", torch.ones(3))
    for text in ("text", "0.5"):
        with pytest.raises(TypeError, match=r"Trainer.log\('bad', ...\) got '"):
            fitted.log("bad", text)


def test_validation_metrics_are_weighted_by_batch_size() -> None:
    class Constant(Classifier):
        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            return torch.tensor(float(batch_idx))  # batches of 8, 8 and 4 samples

    metrics = trainer().validate(Constant(), loader(n=20))
    assert metrics["val_loss"] == pytest.approx((0 * 8 + 1 * 8 + 2 * 4) / 20)


def test_limits_on_batches_epochs_and_steps() -> None:
    fitted = trainer(max_epochs=3, limit_train_batches=3, limit_val_batches=0.5)
    seen = []
    fitted.fabric.add_callback(type("Count", (), {"on_validation_batch_end": lambda self: seen.append(1)})())
    fitted.fit(Classifier(), loader(), loader(n=32))
    assert fitted.num_training_batches == 3
    assert fitted.global_step == 9 and fitted.current_epoch == 3
    assert fitted.stop_reason == "max_epochs=3 reached"
    assert len(seen) == 3 * 2  # half of 4 validation batches, three times

    stepped = trainer(max_epochs=-1, max_steps=11)
    stepped.fit(Classifier(), loader())
    assert stepped.global_step == 11 and stepped.current_epoch == 1
    assert stepped.stop_reason == "max_steps=11 reached"


def test_max_time_stops_at_a_step_boundary() -> None:
    class Slow:
        def on_train_batch_end(self) -> None:
            import time

            time.sleep(0.02)

    timed = trainer(max_epochs=-1, max_time=0.1, callbacks=[Slow()])
    timed.fit(Classifier(), loader())
    assert 2 <= timed.global_step <= 8
    assert timed.stop_reason is not None and timed.stop_reason.startswith("max_time=0.1s")


def test_iterable_dataset_without_length() -> None:
    class Stream(IterableDataset[Any]):
        def __iter__(self) -> Any:
            data = loader(n=20, batch_size=1).dataset
            return iter([data[i] for i in range(20)])

    counts = []

    class Count:
        def on_before_zero_grad(self, trainer: Any) -> None:
            counts.append(trainer.batch_idx)

    fitted = trainer(max_epochs=2, grad_accum_steps=3, callbacks=[Count()])
    fitted.fit(Classifier(), DataLoader(Stream(), batch_size=4))
    assert fitted.num_training_batches == float("inf")
    assert counts == [2, 4, 2, 4]  # every third batch and the last of each epoch of five


def test_progress_bar_is_added_unless_disabled_or_given() -> None:
    from treadle.callbacks.progress import ProgressBar

    default = Trainer(accelerator="cpu")
    assert [type(cb) for cb in default.fabric.callbacks] == [ProgressBar]
    mine = ProgressBar(backend="plain")
    assert Trainer(accelerator="cpu", callbacks=[mine]).fabric.callbacks == (mine,)
    assert Trainer(accelerator="cpu", enable_progress_bar=False).fabric.callbacks == ()


def test_public_attributes_for_callbacks() -> None:
    fitted = trainer(max_epochs=2, checkpoint_dir="somewhere")
    model = Classifier(
        configure=lambda m: (
            (opt := torch.optim.SGD(m.parameters(), lr=0.1)),
            torch.optim.lr_scheduler.StepLR(opt, step_size=1),
        )
    )
    fitted.fit(model, loader())
    assert fitted.model is model
    assert fitted.max_epochs == 2 and fitted.max_steps is None
    assert fitted.checkpoint_dir == "somewhere"
    assert fitted.is_global_zero
    assert fitted.optimizers[0].optimizer.param_groups[0]["params"][0] is next(model.parameters())
    assert isinstance(fitted.lr_schedulers[0], torch.optim.lr_scheduler.StepLR)
    assert fitted.lr_scheduler_configs[0].interval == "epoch"
    assert fitted.should_stop and fitted.stop_reason == "max_epochs=2 reached"
    assert fitted.loggers == [] and fitted.log_dir is None


def test_max_time_rejects_negative_fields() -> None:
    # Regression: "00:01:-30:00" was read as 30 minutes.
    with pytest.raises(ValueError, match=r"max_time='00:01:-30:00'\) has a negative field"):
        trainer(max_time="00:01:-30:00")


def test_fit_rejects_a_ckpt_path_that_is_not_a_path() -> None:
    # Regression: os.fspath's bare "expected str, bytes or os.PathLike object, not int".
    with pytest.raises(TypeError, match=r"fit\(ckpt_path=123\) must be a checkpoint file path"):
        trainer().fit(Classifier(), loader(), ckpt_path=123)  # type: ignore[arg-type]


def test_progress_bar_setting_is_read_from_the_validated_settings() -> None:
    from treadle.callbacks.progress import ProgressBar

    with pytest.raises(TypeError, match=r"enable_progress_bar='yes'\) must be True or False"):
        trainer(enable_progress_bar="yes")
    assert not any(isinstance(c, ProgressBar) for c in trainer(enable_progress_bar=False).fabric.callbacks)


def test_lightning_argument_names_train_exactly_as_treadle_names() -> None:
    results = []
    for names in (
        {"grad_accum_steps": 2, "val_every_n_epochs": 2},
        {"accumulate_grad_batches": 2, "check_val_every_n_epoch": 2},
    ):
        torch.manual_seed(0)
        model, logger = Classifier(), MemoryLogger()
        options = {
            "logger" if "accumulate_grad_batches" in names else "loggers": logger,
            "log_every_n_steps": 1,
        }
        trainer(max_epochs=2, **names, **options).fit(model, loader(), loader())
        results.append((parameters_of(model), logger.metrics))
    (treadle_params, treadle_logs), (lightning_params, lightning_logs) = results
    assert treadle_logs == lightning_logs and any("val_loss" in metrics for _, metrics in lightning_logs)
    assert all(torch.equal(treadle_params[name], lightning_params[name]) for name in treadle_params)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_check_interval": 0.25}, r"val_check_interval=.*Lightning.*val_every_n_steps=n"),
        ({"default_root_dir": "runs"}, r"default_root_dir=.*checkpoint_dir="),
        ({"enable_checkpointing": True}, r"ModelCheckpoint"),
        (
            {"accumulate_grad_batchs": 2},
            r"unexpected keyword argument 'accumulate_grad_batchs'.*'accumulate_grad_batches'",
        ),
        ({"max_epoch": 2}, r"Did you mean 'max_epochs'"),
        (
            {"grad_accum_steps": 2, "accumulate_grad_batches": 4},
            r"grad_accum_steps=.*accumulate_grad_batches=.*one",
        ),
        ({"check_val_every_n_epoch": 1, "validation_frequency": 2}, r"both set val_every_n_epochs"),
        ({"accumulate_grad_batches": 0}, r"grad_accum_steps=0"),
    ],
)
def test_lightning_arguments_treadle_does_not_take_say_what_to_write(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        trainer(**kwargs)
