"""Lazy imports for treadle's optional dependencies.

treadle's core needs only torch. A feature that needs more (TensorBoard logging, plotting, progress bars)
imports its dependency on first use through :func:`require`, so that ``import treadle`` stays cheap and a
missing package is reported with the exact command that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import an optional dependency, or say how to install it.

    Args:
        module: Dotted name of the module to import, e.g. ``"matplotlib"``.
        extra: The treadle extra that installs it, e.g. ``"plot"``.
        feature: What the user asked for, in words they would recognise, e.g. ``"TensorBoardLogger"``.

    Returns:
        The imported module.

    Raises:
        ModuleNotFoundError: ``module`` (or a package above it) is not installed. The message reads
            ``<feature> needs `<module>`, which is not installed. Install it with: pip install
            'treadle[<extra>]'``. When ``module`` is installed but one of *its* dependencies is missing, the
            original error is raised unchanged, because installing the extra would not fix it.

    Example:
        >>> json = require("json", extra="plot", feature="treadle plot")
        >>> json.dumps([1])
        '[1]'
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or not (module == err.name or module.startswith(err.name + ".")):
            raise
        raise ModuleNotFoundError(
            f"{feature} needs `{module}`, which is not installed. "
            f"Install it with: pip install 'treadle[{extra}]'",
            name=module,
        ) from err
