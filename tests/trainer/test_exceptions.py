"""Exceptions in fit and validate reach every callback's on_exception, finalize loggers, and propagate."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.trainer.models import Classifier, MemoryLogger, loader, trainer


class Seen:
    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []

    def on_exception(self, exception: BaseException, trainer: Any) -> None:
        self.exceptions.append(exception)


class Failing(Classifier):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error
        self.seen: list[BaseException] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if batch_idx == 1:
            raise self.error
        return super().training_step(batch, batch_idx)

    def on_exception(self, exception: BaseException) -> None:
        self.seen.append(exception)


@pytest.mark.parametrize(
    ("error", "status"), [(ValueError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")]
)
def test_exception_reaches_every_callback_and_the_model_then_propagates(
    error: BaseException, status: str
) -> None:
    first, second, logger = Seen(), Seen(), MemoryLogger()
    model = Failing(error)
    fitting = trainer(callbacks=[first, second], loggers=[logger])
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(type(error)) as raised:
        fitting.fit(model, loader())
    assert raised.value is error
    assert first.exceptions == second.exceptions == model.seen == [error]
    assert logger.statuses == [status]
    assert model not in fitting.fabric.callbacks
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_a_failing_on_exception_is_noted_on_the_original_error() -> None:
    class Broken:
        def on_exception(self) -> None:
            raise RuntimeError("hook broke")

    logger = MemoryLogger()
    error = ValueError("boom")
    with pytest.raises(ValueError) as raised:
        trainer(callbacks=[Broken()], loggers=logger).fit(Failing(error), loader())
    assert raised.value is error
    assert any("hook broke" in note for note in getattr(error, "__notes__", []))
    assert logger.statuses == ["failed"]


def test_validate_exception_path() -> None:
    class BadValidation(Classifier):
        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            raise KeyError("missing")

    seen, logger = Seen(), MemoryLogger()
    with pytest.raises(KeyError):
        trainer(callbacks=[seen], loggers=logger).validate(BadValidation(), loader(n=16))
    assert len(seen.exceptions) == 1 and logger.statuses == ["failed"]
