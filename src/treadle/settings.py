"""From the arguments of ``Fabric(...)`` to connected objects: accelerator, precision and strategy.

Strings are parsed here once, at the edge; everything after works with objects. All validation happens
before any process group exists.
"""

from __future__ import annotations

from collections.abc import Sequence

from treadle.accelerators import Accelerator, parse_accelerator, parse_devices
from treadle.precision import Precision, parse_precision
from treadle.strategies import Strategy, parse_strategy, read_environment
from treadle.strategies.environment import apply_launch_settings


def build_runtime(
    accelerator: str | Accelerator,
    strategy: str | Strategy,
    devices: int | str | Sequence[int],
    num_nodes: int,
    precision: object,
) -> tuple[Accelerator, Precision, Strategy]:
    """Parse and check the runtime settings, then connect the strategy to the accelerator and precision.

    Raises:
        ValueError: a setting is not valid, alone or with the others, or does not match the launcher.
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"Fabric(num_nodes={num_nodes!r}) must be a positive int, e.g. num_nodes=2.")
    # Options of `treadle run` fill the arguments the code left at their defaults.
    accelerator, strategy, devices, num_nodes, precision = apply_launch_settings(
        accelerator, strategy, devices, num_nodes, precision
    )
    environment = read_environment()
    parsed_accelerator = parse_accelerator(accelerator)
    device_indices = parse_devices(devices, parsed_accelerator)
    if environment.launched and devices == "auto":
        # Under torchrun each process drives one device; "auto" means "as the launcher says".
        device_indices = list(range(environment.local_world_size))
    parsed_precision = parse_precision(precision, parsed_accelerator.device_type)
    num_processes = environment.world_size if environment.launched else len(device_indices) * num_nodes
    parsed_strategy = parse_strategy(strategy, num_processes)
    parsed_strategy.connect(parsed_accelerator, parsed_precision, device_indices, num_nodes, environment)
    return parsed_accelerator, parsed_precision, parsed_strategy
