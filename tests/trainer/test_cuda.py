"""The Trainer on a CUDA device: mixed precision with a grad scaler, clipping, and an exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from tests.trainer.models import Classifier, make_data
from tests.trainer.test_resume import SaveAndStop, assert_bitwise_equal, configure
from treadle.seed import seed_everything
from treadle.trainer import Trainer

pytestmark = pytest.mark.gpu


def _run(
    precision: str, seed: int, callbacks: list[Any] = (), ckpt_path: Path | None = None
) -> tuple[Trainer, nn.Module]:  # type: ignore[assignment]
    seed_everything(seed)
    model = Classifier(dropout=0.3, configure=configure)
    trainer = Trainer(
        accelerator="cuda",
        devices=1,
        precision=precision,
        max_epochs=3,
        grad_accum_steps=2,
        gradient_clip_val=1.0,
        enable_progress_bar=False,
        callbacks=list(callbacks),
        log_every_n_steps=1,
    )
    train = DataLoader(make_data(80), batch_size=8, shuffle=True)
    trainer.fit(model, train, DataLoader(make_data(24), batch_size=8), ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_fit_on_cuda_resumes_bitwise(tmp_path: Path, precision: str) -> None:
    trainer, uninterrupted = _run(precision, seed=0)
    assert next(uninterrupted.parameters()).device.type == "cuda"
    assert torch.isfinite(torch.tensor(trainer.callback_metrics["train_loss"]))
    path = tmp_path / "mid.ckpt"
    _run(precision, seed=0, callbacks=[SaveAndStop(path, lambda t: t.global_step == 7, "on_train_batch_end")])
    checkpoint = torch.load(path, weights_only=True)
    assert "cuda" in checkpoint["rng"]
    if precision == "16-mixed":
        assert "scale" in checkpoint["precision"]["scaler"]
    _, resumed = _run(precision, seed=99, ckpt_path=path)
    assert_bitwise_equal(uninterrupted, resumed)
