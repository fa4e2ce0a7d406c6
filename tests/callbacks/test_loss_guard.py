from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from tests.callbacks.tiny_trainer import TinyRegression, fit_tiny
from treadle import Fabric
from treadle.callbacks.loss_guard import LossGuard
from treadle.precision import MixedPrecision, Precision


def make_fabric(guard: LossGuard, precision: str | Precision = "32-true") -> tuple[Fabric, Any, Any]:
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", precision=precision, callbacks=[guard])  # type: ignore[arg-type]
    model = nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    return fabric, model, optimizer


def train(
    guard: LossGuard, scales: list[float], precision: str | Precision = "32-true", accumulate: int = 1
) -> tuple[list[torch.Tensor], Any, Any]:
    """One loss per entry of `scales` (the loss is multiplied by it); returns the weights after each step."""
    fabric, model, optimizer = make_fabric(guard, precision)
    weights = []
    for index, scale in enumerate(scales):
        loss = model(torch.ones(4, 3)).pow(2).mean() + 1.0
        fabric.backward(loss * scale / accumulate)
        if (index + 1) % accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
            weights.append(model.weight.detach().clone())
        if guard.should_stop:
            break
    return weights, optimizer, fabric


def test_stop_on_nan_in_fabric_loop(capsys: pytest.CaptureFixture[str]) -> None:
    guard = LossGuard()
    weights, _, _ = train(guard, [1.0, 1.0, math.nan, 1.0, 1.0])
    assert len(weights) == 3  # the loop left after the third step
    assert guard.should_stop
    assert guard.stopping_reason == "loss nan (number 3) is not finite"
    assert "LossGuard: stopping, loss nan (number 3) is not finite." in capsys.readouterr().out


def test_spike_detection_after_history() -> None:
    guard = LossGuard(spike_factor=3.0, window=5, min_history=3, verbose=False)
    # Early big values are not spikes (too little history); 1.0 x 5 then 10 is.
    weights, _, _ = train(guard, [20.0, 1.0, 1.0, 1.0, 1.0, 2.5, 10.0, 1.0])
    assert guard.should_stop
    assert (
        guard.stopping_reason is not None
        and "(number 7) is more than 3x the recent mean" in guard.stopping_reason
    )
    assert len(weights) == 7


def test_flagged_losses_stay_out_of_the_history() -> None:
    guard = LossGuard(action="skip", spike_factor=3.0, window=4, min_history=2, verbose=False)
    train(guard, [1.0, 1.0, 50.0, 50.0, 50.0, 1.0])
    # The 50s never entered the mean, so each is a spike, and the final 1.0 is fine.
    assert guard.skipped_steps == 3
    assert not guard.should_stop


def test_skip_leaves_parameters_and_optimizer_state_untouched() -> None:
    guard = LossGuard(action="skip", verbose=False)
    weights, optimizer, _ = train(guard, [1.0, math.nan, 1.0])
    assert guard.skipped_steps == 1 and not guard.should_stop
    assert torch.equal(weights[0], weights[1])  # no update, not even weight decay or momentum
    assert not torch.equal(weights[1], weights[2])
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert int(state["step"]) == 2  # the skipped step did not count for AdamW
    assert torch.isfinite(weights[2]).all()


def test_skip_discards_the_whole_accumulation_group() -> None:
    guard = LossGuard(action="skip", verbose=False)
    weights, _, _ = train(guard, [1.0, 1.0, math.nan, 1.0, 1.0, 1.0], accumulate=2)
    assert guard.skipped_steps == 1
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[1], weights[2])


def test_skip_under_a_grad_scaler_lets_the_scaler_skip() -> None:
    guard = LossGuard(action="skip", spike_factor=2.0, min_history=1, window=1, verbose=False)
    weights, _, fabric = train(guard, [1.0, 100.0, 1.0], precision=MixedPrecision(torch.float16, "cpu"))
    scaler = fabric.precision.scaler
    assert scaler is not None
    assert guard.skipped_steps == 1
    assert torch.equal(weights[0], weights[1])
    assert scaler.get_scale() < 2.0**16  # the skipped step counted as an overflow


def test_too_many_skips_in_a_row_stop() -> None:
    guard = LossGuard(action="skip", max_consecutive_skips=2, verbose=False)
    weights, _, _ = train(guard, [1.0, math.nan, math.nan, 1.0])
    assert guard.should_stop
    assert guard.stopping_reason == "2 steps in a row were skipped (last: loss nan (number 3) is not finite)"
    assert len(weights) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "warn"}, "action='warn'"),
        ({"spike_factor": 1.0}, "spike_factor=1.0"),
        ({"window": 0}, "window=0"),
        ({"window": 5, "min_history": 6}, "min_history=6"),
        ({"max_consecutive_skips": 0}, "max_consecutive_skips=0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LossGuard(**kwargs)


class NaNAtStep(TinyRegression):
    def __init__(self, bad_batch: int) -> None:
        super().__init__()
        self.bad_batch = bad_batch
        self.calls = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls += 1
        loss = super().training_step(batch, batch_idx)
        return loss * math.nan if self.calls == self.bad_batch else loss


def test_trainer_stop() -> None:
    guard = LossGuard(verbose=False)
    trainer = fit_tiny(callbacks=[guard], model=NaNAtStep(bad_batch=3), max_epochs=5)
    assert trainer.should_stop
    assert trainer.stop_reason == "LossGuard: loss nan (number 3) is not finite"
    assert trainer.global_step == 3


def test_trainer_skip_keeps_training() -> None:
    guard = LossGuard(action="skip", verbose=False)
    model = NaNAtStep(bad_batch=3)
    trainer = fit_tiny(callbacks=[guard], model=model, max_epochs=2, gradient_clip_val=1.0)
    assert guard.skipped_steps == 1
    assert trainer.global_step == 8
    assert all(torch.isfinite(p).all() for p in model.parameters())


class TwoRankFabric:
    """A stand-in for a 2-process Fabric whose other rank flagged its loss."""

    world_size = 2
    is_global_zero = True
    precision = None

    def __init__(self) -> None:
        self.reduced: list[bool] = []

    def all_reduce_bool(self, flag: bool, mode: str = "any") -> bool:
        self.reduced.append(flag)
        return True


def test_skip_decision_is_shared_across_ranks() -> None:
    guard = LossGuard(action="skip", verbose=False)
    fabric = TwoRankFabric()
    model = nn.Linear(2, 1)
    guard.on_after_setup(fabric=fabric, module=model)
    model(torch.ones(1, 2)).sum().backward()
    guard.on_before_backward(loss=torch.tensor(1.0))  # fine here, flagged on the other rank
    guard.on_after_backward()
    assert fabric.reduced == [False]
    assert model.weight.grad is None  # discarded on this rank too
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guard.on_before_optimizer_step(optimizer=optimizer)
    assert guard.skipped_steps == 1


def test_verbose_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"LossGuard\(verbose='x'\) must be True or False"):
        LossGuard(verbose="x")  # type: ignore[arg-type]


def test_two_optimizers_after_one_backward_count_one_skip_each() -> None:
    # A GAN-like loop: both optimizers step after one backward. The second optimizer's hook must neither
    # reset the count of skips in a row nor count the same skipped backward again.
    guard = LossGuard(action="skip", max_consecutive_skips=3, verbose=False)
    fabric = Fabric(accelerator="cpu", callbacks=[guard])
    generator, discriminator = nn.Linear(4, 4), nn.Linear(4, 1)
    gen_opt = torch.optim.SGD(generator.parameters(), lr=0.1)
    disc_opt = torch.optim.SGD(discriminator.parameters(), lr=0.1)
    generator, gen_opt = fabric.setup(generator, gen_opt)
    discriminator, disc_opt = fabric.setup(discriminator, disc_opt)
    before = [p.detach().clone() for p in [*generator.parameters(), *discriminator.parameters()]]
    iterations = 0
    for _ in range(10):
        iterations += 1
        fabric.backward(discriminator(generator(torch.ones(2, 4))).sum() * math.nan)
        gen_opt.step()
        disc_opt.step()
        gen_opt.zero_grad()
        disc_opt.zero_grad()
        if guard.should_stop:
            break
    assert guard.should_stop
    assert iterations == 3
    assert guard.skipped_steps == 3
    after = [*generator.parameters(), *discriminator.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # both optimizers skipped


def test_an_unflagged_backward_resets_skips_in_a_row_with_two_optimizers() -> None:
    guard = LossGuard(action="skip", max_consecutive_skips=2, verbose=False)
    fabric = Fabric(accelerator="cpu", callbacks=[guard])
    first, second = nn.Linear(2, 1), nn.Linear(2, 1)
    opt_a = torch.optim.SGD(first.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(second.parameters(), lr=0.1)
    first, opt_a = fabric.setup(first, opt_a)
    second, opt_b = fabric.setup(second, opt_b)
    for scale in [math.nan, 1.0, math.nan, 1.0, math.nan]:
        fabric.backward((first(torch.ones(1, 2)) + second(torch.ones(1, 2))).sum() * scale)
        opt_a.step()
        opt_b.step()
        opt_a.zero_grad()
        opt_b.zero_grad()
    assert guard.skipped_steps == 3
    assert not guard.should_stop


class ConstantLoss(nn.Module):
    """Every training batch's loss is exactly 1.0."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.weight * 0 + 1.0).sum()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_short_last_accumulation_group_is_not_a_spike() -> None:
    # 9 batches in groups of 4, 4, 1: the Trainer passes 0.25 to backward for a full group and 1.0 for the
    # last one; the guard must judge the loss training_step returned (always 1.0).
    from torch.utils.data import DataLoader, TensorDataset

    from tests.callbacks.tiny_trainer import trainer_class

    guard = LossGuard(action="skip", spike_factor=3.0, min_history=2, max_consecutive_skips=None)
    trainer = trainer_class()(
        accelerator="cpu", max_epochs=2, grad_accum_steps=4, callbacks=[guard], enable_progress_bar=False
    )
    trainer.fit(ConstantLoss(), DataLoader(TensorDataset(torch.zeros(9, 1)), batch_size=1))
    assert guard.skipped_steps == 0
    assert trainer.global_step == 6
