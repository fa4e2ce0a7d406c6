"""Distributed data parallel: every rank holds the whole model; gradients are averaged during backward."""

from __future__ import annotations

import contextlib
import inspect
from datetime import timedelta
from typing import Any, ClassVar, Literal

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from treadle.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy, StartMethod

# Arguments of DistributedDataParallel that the strategy sets itself and the user must not pass again.
_OWN_ARGUMENTS = frozenset({"self", "module", "device_ids", "output_device", "process_group"})


class DDPStrategy(ParallelStrategy):
    """Train a full copy of the model on every rank with ``torch.nn.parallel.DistributedDataParallel``.

    ``strategy="ddp"`` is ``DDPStrategy()``; ``strategy="ddp_spawn"`` is ``DDPStrategy(start_method="spawn")``.
    Pass an instance to set options.

    Args:
        find_unused_parameters: let DDP cope with parameters that get no gradient in some steps (slower).
        static_graph: promise that the set of used parameters is the same in every step (faster, and allows
            some re-entrant checkpointing).
        gradient_as_bucket_view: let gradients alias DDP's communication buckets to save memory.
        timeout: how long a collective waits for the other ranks before it fails.
        process_group_backend: ``"gloo"``, ``"nccl"``, ...; None picks nccl on CUDA and gloo elsewhere.
        start_method: ``"popen"`` (``fabric.launch()`` re-runs the script for the other ranks), ``"spawn"``
            (``fabric.launch(function)`` runs the function in new processes) or ``"fork"`` (for notebooks).
        hang_timeout: end a hung job with the stuck rank named and every rank's stack printed, after a rank
            has waited this long while no rank makes progress (``"auto"``: 90% of `timeout`; None: off).
        **ddp_kwargs: further arguments of ``DistributedDataParallel``, e.g. ``bucket_cap_mb=50``.

    Raises:
        TypeError: an argument has the wrong type, or ``ddp_kwargs`` has a name DDP does not take.
        ValueError: an option has an invalid value.

    Example::

        fabric = Fabric(accelerator="cuda", devices=4, strategy=DDPStrategy(find_unused_parameters=True))
    """

    name: ClassVar[str] = "ddp"

    def __init__(
        self,
        find_unused_parameters: bool = False,
        static_graph: bool = False,
        gradient_as_bucket_view: bool = False,
        timeout: timedelta = DEFAULT_TIMEOUT,
        process_group_backend: str | None = None,
        start_method: StartMethod = "popen",
        hang_timeout: timedelta | float | Literal["auto"] | None = "auto",
        **ddp_kwargs: Any,
    ) -> None:
        super().__init__(
            timeout=timeout,
            process_group_backend=process_group_backend,
            start_method=start_method,
            hang_timeout=hang_timeout,
        )
        flags = {
            "find_unused_parameters": find_unused_parameters,
            "static_graph": static_graph,
            "gradient_as_bucket_view": gradient_as_bucket_view,
        }
        for option, value in flags.items():
            if not isinstance(value, bool):
                raise TypeError(f"DDPStrategy({option}={value!r}) must be True or False.")
        accepted = set(inspect.signature(DistributedDataParallel.__init__).parameters) - _OWN_ARGUMENTS
        unknown = sorted(set(ddp_kwargs) - accepted)
        if unknown:
            raise TypeError(
                f"DDPStrategy() got argument(s) {', '.join(unknown)} that DistributedDataParallel does not take "
                f"(or that the strategy sets itself). It accepts: {', '.join(sorted(accepted - set(flags)))}."
            )
        self.find_unused_parameters = find_unused_parameters
        self.static_graph = static_graph
        self.gradient_as_bucket_view = gradient_as_bucket_view
        self.ddp_kwargs = ddp_kwargs

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Wrap ``module`` in DistributedDataParallel (a frozen module, with nothing to train, is left as is)."""
        self._require_group("setup_module")
        if not any(parameter.requires_grad for parameter in module.parameters()):
            return module
        device = self.root_device
        return DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=self.find_unused_parameters,
            static_graph=self.static_graph,
            gradient_as_bucket_view=self.gradient_as_bucket_view,
            **self.ddp_kwargs,
        )

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP's ``no_sync``: gradients accumulate locally and are averaged at the next synchronised backward."""
        if enabled and isinstance(module, DistributedDataParallel):
            return module.no_sync()
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        parts = [
            f"{name}=True"
            for name in ("find_unused_parameters", "static_graph", "gradient_as_bucket_view")
            if getattr(self, name)
        ]
        parts += [f"{key}={value!r}" for key, value in self.ddp_kwargs.items()]
        options = self._options_repr()
        if options:
            parts.append(options)
        return f"DDPStrategy({', '.join(parts)})"
