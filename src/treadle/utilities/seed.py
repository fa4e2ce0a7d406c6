"""``lightning.fabric.utilities.seed``'s names: treadle's seeding lives in ``treadle.seed``."""

from __future__ import annotations

from treadle.seed import capture_rng_state, restore_rng_state, seed_everything

__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything"]
