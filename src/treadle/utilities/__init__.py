"""The helpers Lightning Fabric scripts import from ``lightning.fabric.utilities``, under the same names.

``from lightning.fabric.utilities import rank_zero_warn`` becomes ``from treadle.utilities import
rank_zero_warn``; each submodule holds one concept (``rank_zero``, ``types``, ``seed``, ``apply_func``,
``model_helpers``), as in Lightning, so deeper imports port the same way.
"""

from __future__ import annotations

from treadle.utilities import apply_func, model_helpers, rank_zero, seed, types
from treadle.utilities.apply_func import apply_to_collection, move_data_to_device
from treadle.utilities.model_helpers import is_overridden
from treadle.utilities.rank_zero import rank_zero_debug, rank_zero_info, rank_zero_only, rank_zero_warn
from treadle.utilities.seed import seed_everything

__all__ = [
    "apply_func",
    "apply_to_collection",
    "is_overridden",
    "model_helpers",
    "move_data_to_device",
    "rank_zero",
    "rank_zero_debug",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
    "seed",
    "seed_everything",
    "types",
]
