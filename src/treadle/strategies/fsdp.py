"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``): each rank keeps a shard of
the parameters, gradients and optimizer state, and gathers full layers only while it computes them."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn

from treadle.strategies.fsdp_checkpoint import ShardedCheckpoints
from treadle.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy, StartMethod
from treadle.strategies.replaced_parameters import ReplacedParameters

StateDictType = Literal["sharded", "full"]

# Fabric precision -> (param_dtype, reduce_dtype) of FSDP2's MixedPrecisionPolicy. Parameters are gathered
# in the low dtype for compute; gradients are reduced in float32 so that averaging loses nothing.
_MIXED_DTYPES: dict[str, tuple[torch.dtype, torch.dtype]] = {
    "bf16-mixed": (torch.bfloat16, torch.float32),
    "16-mixed": (torch.float16, torch.float32),
}


class FSDPStrategy(ShardedCheckpoints, ParallelStrategy):
    """Shard the model across ranks with FSDP2 (``fully_shard``).

    Each submodule whose class is in ``shard_modules`` becomes its own shard group (typically the
    transformer block), then the root module takes the rest. ``fabric.setup(model, optimizer)`` works even
    though sharding replaces the parameters: the optimizer is pointed at the sharded ones.

    Args:
        shard_modules: module classes to shard one by one, e.g. ``{TransformerBlock}``; without them the
            whole model is one group (fine for small models, no memory saving during compute).
        reshard_after_forward: free gathered parameters after forward and gather them again in backward
            (saves memory, costs communication). An int reshards to groups of that many ranks.
        cpu_offload: keep sharded parameters, gradients and optimizer state in CPU memory.
        mixed_precision: an explicit ``torch.distributed.fsdp.MixedPrecisionPolicy``; by default it follows
            Fabric's precision (``"bf16-mixed"``: bfloat16 parameters for compute, float32 reduction).
        state_dict_type: what ``fabric.save`` writes: ``"sharded"`` (a folder written by every rank with
            ``torch.distributed.checkpoint``; fast, needs the same storage on every machine) or ``"full"``
            (one ordinary file written by rank 0). ``fabric.load`` reads both.
        timeout: how long a collective waits for the other ranks before it fails (as for ``DDPStrategy``).
        process_group_backend: ``"gloo"``, ``"nccl"``, ...; None picks nccl on CUDA and gloo elsewhere.
        start_method: ``"popen"`` (run the script again per rank) or ``"spawn"``, as for ``DDPStrategy``.
        hang_timeout: how long a rank waits on the others before the job ends with a report of where each
            rank is (as for ``DDPStrategy``).

    Raises:
        TypeError, ValueError: an option has the wrong type or value; the message names it.

    Example::

        strategy = FSDPStrategy(shard_modules={Block}, state_dict_type="full")
        fabric = Fabric(accelerator="cuda", devices=8, strategy=strategy, precision="bf16-mixed")
    """

    name: ClassVar[str] = "fsdp"

    def __init__(
        self,
        shard_modules: Iterable[type[nn.Module]] | None = None,
        reshard_after_forward: bool | int = True,
        cpu_offload: bool = False,
        mixed_precision: Any = None,
        state_dict_type: StateDictType = "sharded",
        timeout: timedelta = DEFAULT_TIMEOUT,
        process_group_backend: str | None = None,
        start_method: StartMethod = "popen",
        hang_timeout: timedelta | float | Literal["auto"] | None = "auto",
    ) -> None:
        super().__init__(
            timeout=timeout,
            process_group_backend=process_group_backend,
            start_method=start_method,
            hang_timeout=hang_timeout,
        )
        self.shard_modules = _check_shard_modules(shard_modules)
        if isinstance(reshard_after_forward, bool):
            pass
        elif not isinstance(reshard_after_forward, int) or reshard_after_forward < 1:
            raise ValueError(
                f"FSDPStrategy(reshard_after_forward={reshard_after_forward!r}) must be True, False, or a "
                "positive int (reshard to groups of that many ranks)."
            )
        if not isinstance(cpu_offload, bool):
            raise TypeError(f"FSDPStrategy(cpu_offload={cpu_offload!r}) must be True or False.")
        if state_dict_type not in get_args(StateDictType):
            raise ValueError(
                f"FSDPStrategy(state_dict_type={state_dict_type!r}) is not a checkpoint kind. Choose 'sharded' "
                "(a folder, every rank writes its shard) or 'full' (one file written by rank 0)."
            )
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if mixed_precision is not None and not isinstance(mixed_precision, MixedPrecisionPolicy):
            raise TypeError(
                f"FSDPStrategy(mixed_precision={mixed_precision!r}) must be a "
                "torch.distributed.fsdp.MixedPrecisionPolicy, or None to follow Fabric(precision=...)."
            )
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = cpu_offload
        self.mixed_precision = mixed_precision
        self.state_dict_type: StateDictType = state_dict_type
        self._mesh: Any = None
        self._replaced = ReplacedParameters()
        self._sharded_modules: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    # --- modules and optimizers ---------------------------------------------------------------------------
    def setup_module(self, module: nn.Module) -> nn.Module:
        """Apply ``fully_shard`` to each ``shard_modules`` submodule (innermost first), then to ``module``."""
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard

        self._require_group("setup_module")
        if isinstance(module, FSDPModule):  # sharded by the user already
            self._sharded_modules.add(module)
            return module
        before = {name: parameter for name, parameter in module.named_parameters()}
        offload = (
            CPUOffloadPolicy(pin_memory=self.root_device.type == "cuda")
            if self.cpu_offload
            else OffloadPolicy()
        )
        options: dict[str, Any] = {
            "mesh": self._device_mesh(),
            "reshard_after_forward": self.reshard_after_forward,
            "mp_policy": self._mixed_precision_policy(),
            "offload_policy": offload,
        }
        if self.shard_modules:
            # FSDP2 wants inner modules sharded before the modules that contain them.
            for submodule in reversed([m for m in module.modules() if m is not module]):
                if isinstance(submodule, self.shard_modules) and not isinstance(submodule, FSDPModule):
                    fully_shard(submodule, **options)
        fully_shard(module, **options)
        self._replaced.record(before, module)
        self._sharded_modules.add(module)
        return module

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Point ``optimizer`` at the sharded parameters if it was created on the model before setup.

        Raises:
            RuntimeError: ``optimizer`` already has state for parameters that sharding replaced; the
                optimizer is left unchanged.
        """
        return self._replaced.retarget(optimizer)

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """Accumulate unsharded gradients locally (no reduce-scatter) until the context ends."""
        from torch.distributed.fsdp import FSDPModule

        if enabled and isinstance(module, FSDPModule):
            return _gradient_sync_off(module)
        return contextlib.nullcontext()

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        norm = super().clip_gradients_norm(module, optimizer, max_norm, norm_type, error_if_nonfinite)
        # Over sharded gradients the norm is a DTensor; callers want the plain total.
        full_tensor = getattr(norm, "full_tensor", None)
        return full_tensor() if callable(full_tensor) else norm

    # --- checkpoints ----------------------------------------------------------------------------------
    def _writes_folder(self) -> bool:
        return self.state_dict_type == "sharded"

    # --- helpers --------------------------------------------------------------------------------------
    def _device_mesh(self) -> Any:
        if self._mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            self._mesh = init_device_mesh(self.root_device.type, (self.world_size,))
        return self._mesh

    def _mixed_precision_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.mixed_precision is not None:
            return self.mixed_precision
        dtypes = _MIXED_DTYPES.get(self.precision.name)
        if dtypes is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=dtypes[0], reduce_dtype=dtypes[1])

    def __repr__(self) -> str:
        parts = []
        if self.shard_modules:
            parts.append("shard_modules={" + ", ".join(cls.__name__ for cls in self.shard_modules) + "}")
        if self.reshard_after_forward is not True:
            parts.append(f"reshard_after_forward={self.reshard_after_forward!r}")
        if self.cpu_offload:
            parts.append("cpu_offload=True")
        if self.state_dict_type != "sharded":
            parts.append(f"state_dict_type={self.state_dict_type!r}")
        options = self._options_repr()
        if options:
            parts.append(options)
        return f"FSDPStrategy({', '.join(parts)})"


@contextlib.contextmanager
def _gradient_sync_off(module: Any) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _check_shard_modules(shard_modules: Iterable[type[nn.Module]] | None) -> tuple[type[nn.Module], ...]:
    if shard_modules is None:
        return ()
    if isinstance(shard_modules, type) or not isinstance(shard_modules, Iterable):
        raise TypeError(
            f"FSDPStrategy(shard_modules={shard_modules!r}) must be a set of module classes, e.g. "
            "shard_modules={TransformerBlock}."
        )
    classes = tuple(shard_modules)
    wrong = [item for item in classes if not (isinstance(item, type) and issubclass(item, nn.Module))]
    if wrong:
        raise TypeError(
            f"FSDPStrategy(shard_modules=...) holds {wrong!r}, which are not torch.nn.Module classes. Pass the "
            "classes themselves, e.g. shard_modules={TransformerBlock}, not instances or names."
        )
    return classes
