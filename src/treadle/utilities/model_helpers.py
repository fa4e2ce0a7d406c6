"""Whether a model defines a hook itself, for loops that skip work the model did not ask for."""

from __future__ import annotations

from treadle.callbacks.hooks import Callback
from treadle.wrappers import unwrap

__all__ = ["is_overridden"]


def is_overridden(method_name: str, instance: object, parent: type | None = None) -> bool:
    """Whether `instance`'s class (or a base below `parent`) defines `method_name`.

    A set-up model is looked at through its wrapper. Without `parent`, the method counts as overridden
    when it is defined below the framework base classes: ``object``, ``torch.nn.Module``, ``treadle.Callback``
    and Lightning's ``LightningModule`` (whose default hooks do nothing), so it works for plain modules,
    callbacks and LightningModules.

    Raises:
        TypeError: `method_name` is not a str.

    Example::

        if is_overridden("validation_step", model):
            ...
    """
    if not isinstance(method_name, str):
        raise TypeError(f"is_overridden(method_name={method_name!r}) must be the method's name as a str.")
    instance = unwrap(instance)
    for cls in type(instance).__mro__:
        if cls is parent or (parent is None and _is_framework_base(cls)):
            return False
        if method_name in vars(cls):
            return vars(cls)[method_name] is not None
    return False


def _is_framework_base(cls: type) -> bool:
    module = cls.__module__ or ""
    return (
        cls is object
        or cls is Callback
        or module.startswith(("torch.", "lightning.", "pytorch_lightning.", "lightning_fabric."))
    )
