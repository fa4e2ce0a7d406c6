"""From the arguments of ``Fabric(...)`` to connected objects: accelerator, precision and strategy.

Strings are parsed here once, at the edge; everything after works with objects. All validation happens
before any process group exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from treadle.accelerators import Accelerator, parse_accelerator, parse_devices
from treadle.precision import Precision, parse_precision
from treadle.strategies import ProcessEnvironment, Strategy, parse_strategy, read_environment
from treadle.strategies.environment import apply_launch_settings


def build_runtime(
    accelerator: str | Accelerator,
    strategy: str | Strategy,
    devices: int | str | Sequence[int],
    num_nodes: int,
    precision: object,
    plugins: Any = None,
) -> tuple[Accelerator, Precision, Strategy]:
    """Parse and check the runtime settings, then connect the strategy to the accelerator and precision.

    Raises:
        ValueError: a setting is not valid, alone or with the others, or does not match the launcher.
        TypeError: a plugin is of a kind treadle does not have.
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"Fabric(num_nodes={num_nodes!r}) must be a positive int, e.g. num_nodes=2.")
    # Options of `treadle run` fill the arguments the code left at their defaults.
    accelerator, strategy, devices, num_nodes, precision = apply_launch_settings(
        accelerator, strategy, devices, num_nodes, precision
    )
    precision, given_environment = split_plugins(plugins, precision)
    environment = read_environment() if given_environment is None else given_environment
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


def split_plugins(plugins: Any, precision: object) -> tuple[object, ProcessEnvironment | None]:
    """Sort ``Fabric(plugins=...)`` into the precision and the process environment it replaces.

    Returns:
        The precision to use (the plugin's, or ``precision`` when no plugin is a Precision) and the
        environment plugin, or None.

    Raises:
        TypeError: a plugin is of a kind treadle does not have; the message says what it takes.
        ValueError: two plugins of one kind, or a Precision plugin together with a non-default precision=.
    """
    if plugins is None:
        return precision, None
    items = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    found: dict[str, Any] = {}
    for position, plugin in enumerate(items):
        if isinstance(plugin, Precision):
            kind = "precision"
        elif isinstance(plugin, ProcessEnvironment):
            kind = "environment"
        else:
            raise TypeError(
                f"Fabric(plugins=...) item {position} is {plugin!r} ({type(plugin).__module__}."
                f"{type(plugin).__qualname__}), not a plugin treadle has. It takes treadle.precision.Precision "
                "objects (e.g. MixedPrecision(torch.bfloat16, 'cuda')) and treadle.strategies."
                "ProcessEnvironment objects. For a precision by name use Fabric(precision='bf16-mixed'); "
                "Lightning's own plugin classes do not work with treadle."
            )
        if kind in found:
            raise ValueError(
                f"Fabric(plugins=...) has two {kind} plugins ({found[kind]!r} and {plugin!r}); pass one."
            )
        found[kind] = plugin
    if "precision" in found:
        if precision not in (None, "32-true"):
            raise ValueError(
                f"Fabric(precision={precision!r}, plugins=[{found['precision']!r}]) sets the precision twice; "
                "pass only one of them."
            )
        precision = found["precision"]
    return precision, found.get("environment")
