"""The hooks Fabric fires itself carry trainer= and fabric= inside the Trainer, like every other hook."""

from __future__ import annotations

from typing import Any

from tests.trainer.models import Classifier, loader, trainer


class NeedsTrainer:
    def __init__(self) -> None:
        self.seen: dict[str, tuple[Any, Any]] = {}

    def _record(self, hook: str, trainer: Any, fabric: Any) -> None:
        self.seen.setdefault(hook, (trainer, fabric))

    def on_after_setup(self, trainer: Any, fabric: Any) -> None:
        self._record("on_after_setup", trainer, fabric)

    def on_before_backward(self, loss: Any, trainer: Any, fabric: Any) -> None:
        self._record("on_before_backward", trainer, fabric)

    def on_after_backward(self, trainer: Any, fabric: Any) -> None:
        self._record("on_after_backward", trainer, fabric)

    def on_before_optimizer_step(self, optimizer: Any, trainer: Any, fabric: Any) -> None:
        self._record("on_before_optimizer_step", trainer, fabric)

    def on_after_optimizer_step(self, optimizer: Any, trainer: Any, fabric: Any) -> None:
        self._record("on_after_optimizer_step", trainer, fabric)


def test_fabric_fired_hooks_get_the_trainer() -> None:
    callback = NeedsTrainer()
    run = trainer(callbacks=[callback], max_steps=2)
    run.fit(Classifier(), loader())
    assert set(callback.seen) == {
        "on_after_setup",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_after_optimizer_step",
    }
    for hook, (got_trainer, got_fabric) in callback.seen.items():
        assert got_trainer is run, hook
        assert got_fabric is run.fabric, hook
