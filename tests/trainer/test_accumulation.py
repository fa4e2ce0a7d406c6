"""Gradient accumulation matches one big batch; gradient sync is skipped between steps; clipping."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from tests.trainer.models import Classifier, make_data, trainer
from treadle.seed import seed_everything


def _fit(batch_size: int, accum: int, **options: Any) -> Any:
    seed_everything(0)
    model = Classifier(lr=0.5)
    fitted = trainer(max_epochs=2, grad_accum_steps=accum, **options)
    fitted.fit(model, DataLoader(make_data(40), batch_size=batch_size))
    return fitted, model


def test_accumulated_steps_match_one_big_batch() -> None:
    # 10 micro-batches of 4 in groups of 4, 4 and 2 against batches of 16, 16 and 8.
    small, small_model = _fit(batch_size=4, accum=4)
    big, big_model = _fit(batch_size=16, accum=1)
    assert small.global_step == big.global_step == 6
    for (name, left), (_, right) in zip(
        small_model.state_dict().items(), big_model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(left, right, rtol=0, atol=1e-6, msg=name)


def test_steps_happen_every_k_batches_and_on_the_last_and_sync_only_then() -> None:
    steps: list[int] = []
    syncs: list[bool] = []

    class Steps:
        def on_before_zero_grad(self, trainer: Any) -> None:
            steps.append(trainer.batch_idx)

    fitted = trainer(max_epochs=1, grad_accum_steps=4, callbacks=[Steps()])
    original = fitted.fabric.no_backward_sync

    def spy(module: Any, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
        syncs.append(not enabled)
        return original(module, enabled)

    fitted.fabric.no_backward_sync = spy  # type: ignore[method-assign]
    fitted.fit(Classifier(), DataLoader(make_data(40), batch_size=4))
    assert steps == [3, 7, 9]
    assert syncs == [False, False, False, True, False, False, False, True, False, True]


def test_backward_sees_the_loss_divided_by_the_group_size() -> None:
    seen: list[tuple[float, float]] = []

    class Compare:
        def on_before_backward(self, loss: torch.Tensor) -> None:
            seen.append((float(loss.detach()), 0.0))

        def on_train_batch_end(self, loss: torch.Tensor) -> None:
            seen[-1] = (seen[-1][0], float(loss))

    trainer(grad_accum_steps=4, callbacks=[Compare()]).fit(
        Classifier(), DataLoader(make_data(24), batch_size=4)
    )
    ratios = [round(unscaled / scaled) for scaled, unscaled in seen]
    assert ratios == [4, 4, 4, 4, 2, 2]


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradients_are_clipped_before_the_step(algorithm: str) -> None:
    measured: list[float] = []

    class Big(Classifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return 1000 * super().training_step(batch, batch_idx)

    class Measure:
        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            grads = [
                p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
            ]
            if algorithm == "norm":
                measured.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            else:
                measured.append(max(float(g.abs().max()) for g in grads))

    trainer(gradient_clip_val=0.5, gradient_clip_algorithm=algorithm, callbacks=[Measure()]).fit(
        Big(), DataLoader(make_data(16), batch_size=4)
    )
    assert len(measured) == 4
    assert max(measured) <= 0.5 + 1e-5
    assert max(measured) > 0.4  # the raw gradients were far larger, so clipping is what bounds them


class GroupSizes:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_train_batch_start(self, trainer: Any) -> None:
        self.sizes.append(trainer.accumulation_group_size)


def test_accumulation_group_size_is_public_and_short_for_the_last_group() -> None:
    sizes = GroupSizes()
    run = trainer(max_epochs=1, grad_accum_steps=4, callbacks=[sizes])
    run.fit(Classifier(), DataLoader(make_data(72), batch_size=8))  # 9 batches: 4 + 4 + 1
    assert sizes.sizes == [4] * 8 + [1]
