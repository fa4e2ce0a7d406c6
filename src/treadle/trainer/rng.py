"""The random-number states behind an exact resume, and the moments they are captured and put back.

Three states matter. At the start of each epoch, because creating the dataloader's iterator draws its
shuffling seed: a run resumed mid-epoch rebuilds the same order from it. At saving, because dropout and
data augmentation continue from it. And around validation, which must not move the training stream at all,
so that how often validation runs never changes the trained weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from treadle.errors import caller_stacklevel
from treadle.seed import capture_rng_state, restore_rng_state

__all__ = ["TrainingRng"]


class TrainingRng:
    """Captures and restores the global RNG states (python, numpy, torch, CUDA) for the Trainer's loop.

    Example::

        rng = TrainingRng()
        rng.begin_epoch(resuming_mid_epoch=False)   # before iter(train_loader)
        with rng.validation():                       # validation leaves the RNG as it found it
            ...
        checkpoint.update(rng.state_dict())
    """

    def __init__(self) -> None:
        self._epoch_start: dict[str, Any] | None = None
        self._outside_validation: dict[str, Any] | None = None
        self._pending: dict[str, Any] | None = None  # the saved state, put back once the loop is where it was

    def reset(self) -> None:
        """Forget every captured state: a new ``fit`` starts from the RNG as it is now."""
        self._epoch_start = self._outside_validation = self._pending = None

    def begin_epoch(self, resuming_mid_epoch: bool) -> None:
        """Call right before the epoch's iterator is created: captures the state, or, when a run resumes in the
        middle of this epoch, puts back the one the interrupted run captured here."""
        if resuming_mid_epoch and self._epoch_start is not None:
            restore_rng_state(self._epoch_start)
        else:
            self._epoch_start = capture_rng_state()

    def end_epoch(self) -> None:
        """Drop the epoch-start state once the epoch is done: the next checkpoint resumes at an epoch start."""
        self._epoch_start = None

    @contextmanager
    def validation(self) -> Iterator[None]:
        """Run the block, then put the RNG back as it was before it."""
        self._outside_validation = state = capture_rng_state()
        try:
            yield
        finally:
            restore_rng_state(state)
            self._outside_validation = None

    def state_dict(self) -> dict[str, Any]:
        """The entries ``rng`` and ``rng_epoch_start`` of a checkpoint."""
        # Saved from inside validation, the training stream is the state validation will put back.
        return {"rng": self._outside_validation or capture_rng_state(), "rng_epoch_start": self._epoch_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Remember a checkpoint's states; ``apply_saved`` puts the saving moment's state back."""
        self._pending, self._epoch_start = state["rng"], state.get("rng_epoch_start")
        if not self._pending:
            warnings.warn(
                "The checkpoint holds no random-number-generator state, so the resumed run draws different "
                "random numbers (dropout, shuffling) than the uninterrupted run would have. Checkpoints the "
                "Trainer writes always hold it; was this one edited?",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )
            self._pending = None

    def apply_saved(self) -> None:
        """Put back the state of the moment the loaded checkpoint was saved (once)."""
        if self._pending is not None:
            restore_rng_state(self._pending)
            self._pending = None
