"""One process, one device: the base strategy's defaults are exactly this."""

from __future__ import annotations

from typing import ClassVar

from treadle.strategies.base import Strategy


class SingleDeviceStrategy(Strategy):
    """Run in this process on one device. Collectives are identities; checkpoints are plain files."""

    name: ClassVar[str] = "single_device"
