"""Tensor parallel and data parallel together on a 2D device mesh: the user decides how the model is split.

treadle builds the mesh ``("data_parallel", "tensor_parallel")`` and hands it to the user's
``parallelize_fn(model, device_mesh)``, which applies ``parallelize_module`` on the tensor-parallel dimension
and ``fully_shard`` on the data-parallel one (torchtitan's recipe). Everything around that (optimizers made
before setup, meta-device models, clipping DTensor gradients, sharding data over data-parallel ranks only,
checkpoints) is the strategy's job.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from treadle.strategies.dtensor_norm import clip_by_norm
from treadle.strategies.fsdp import _gradient_sync_off
from treadle.strategies.fsdp_checkpoint import ShardedCheckpoints
from treadle.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy, StartMethod
from treadle.strategies.replaced_parameters import ReplacedParameters

MESH_DIMS = ("data_parallel", "tensor_parallel")


class ModelParallelStrategy(ShardedCheckpoints, ParallelStrategy):
    """Split the model with your own ``parallelize_fn`` over a 2D mesh of data- and tensor-parallel ranks.

    ``fabric.setup(model)`` calls ``parallelize_fn(model, device_mesh)``; the function applies tensor
    parallelism (``torch.distributed.tensor.parallel.parallelize_module`` on ``device_mesh["tensor_parallel"]``)
    and data parallelism (``torch.distributed.fsdp.fully_shard`` on ``device_mesh["data_parallel"]``) as it
    sees fit and returns the model. A model created under ``fabric.init_module(empty_init=True)`` lives on
    the meta device until then; after ``parallelize_fn`` it is allocated on this rank's device and each
    submodule's ``reset_parameters()`` initialises its shard. Dataloaders are split over the data-parallel
    ranks only: the ranks of one tensor-parallel group read the same batches.

    Args:
        parallelize_fn: ``(model, device_mesh) -> model``, applying the parallelisms; it must return a module.
        data_parallel_size: ranks per model replica group; ``"auto"`` is the number of machines (or
            ``world_size // tensor_parallel_size`` when that is given).
        tensor_parallel_size: ranks that split each layer; ``"auto"`` is the number of devices per machine
            (or ``world_size // data_parallel_size`` when that is given). The product must be the world size.
        save_distributed_checkpoint: ``fabric.save`` writes a sharded folder (every rank writes its shards
            with ``torch.distributed.checkpoint``); False gathers one full file on rank 0. ``fabric.load``
            reads both, also when written by a different number of ranks or another strategy.
        process_group_backend: ``"gloo"``, ``"nccl"``, ...; None picks nccl on CUDA and gloo elsewhere.
        timeout: how long a collective waits for the other ranks before it fails.
        start_method: as for ``DDPStrategy`` (``"popen"`` or ``"spawn"``).
        hang_timeout: as for ``DDPStrategy``: how long a rank waits on the others before the job is ended
            with a report of where each rank is.

    Raises:
        TypeError, ValueError: an option has the wrong type or value; the message names it.

    Example::

        def parallelize(model, device_mesh):
            tp_mesh, dp_mesh = device_mesh["tensor_parallel"], device_mesh["data_parallel"]
            for block in model.blocks:
                parallelize_module(block, tp_mesh, {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
                fully_shard(block, mesh=dp_mesh)
            fully_shard(model, mesh=dp_mesh)
            return model

        strategy = ModelParallelStrategy(parallelize, data_parallel_size=2, tensor_parallel_size=4)
        fabric = Fabric(accelerator="cuda", devices=8, strategy=strategy)
    """

    name: ClassVar[str] = "model_parallel"

    def __init__(
        self,
        parallelize_fn: Callable[[nn.Module, Any], nn.Module],
        data_parallel_size: Literal["auto"] | int = "auto",
        tensor_parallel_size: Literal["auto"] | int = "auto",
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
        start_method: StartMethod = "popen",
        hang_timeout: timedelta | float | Literal["auto"] | None = "auto",
    ) -> None:
        super().__init__(
            timeout=timeout,
            process_group_backend=process_group_backend,
            start_method=start_method,
            hang_timeout=hang_timeout,
        )
        if not callable(parallelize_fn):
            raise TypeError(
                f"ModelParallelStrategy(parallelize_fn={parallelize_fn!r}) must be a function "
                "(model, device_mesh) -> model that applies parallelize_module and/or fully_shard."
            )
        for option, value in (
            ("data_parallel_size", data_parallel_size),
            ("tensor_parallel_size", tensor_parallel_size),
        ):
            if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"ModelParallelStrategy({option}={value!r}) must be 'auto' or a positive int."
                )
        if not isinstance(save_distributed_checkpoint, bool):
            raise TypeError(
                f"ModelParallelStrategy(save_distributed_checkpoint={save_distributed_checkpoint!r}) must be "
                "True (a sharded folder) or False (one full file)."
            )
        self.parallelize_fn = parallelize_fn
        self.data_parallel_size = data_parallel_size
        self.tensor_parallel_size = tensor_parallel_size
        self.save_distributed_checkpoint = save_distributed_checkpoint
        self._mesh: Any = None
        self._replaced = ReplacedParameters()
        self._sharded_modules: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    # --- the mesh -----------------------------------------------------------------------------------------
    @property
    def device_mesh(self) -> Any:
        """The ``torch.distributed.DeviceMesh`` with dimensions ``("data_parallel", "tensor_parallel")``.

        Raises:
            RuntimeError: the processes have not joined yet (before ``fabric.launch()``).
        """
        if self._mesh is None:
            if self.accelerator is None:
                raise RuntimeError(
                    "ModelParallelStrategy.device_mesh exists once the strategy belongs to a Fabric and the "
                    "processes are started: pass it to Fabric(strategy=...) and call fabric.launch() first."
                )
            self._join_group("ModelParallelStrategy.device_mesh needs")
            self._mesh = self._build_mesh()
        return self._mesh

    def mesh_shape(self) -> tuple[int, int]:
        """``(data_parallel_size, tensor_parallel_size)`` with ``"auto"`` resolved for this job.

        Raises:
            ValueError: the sizes do not multiply to the world size.
        """
        world = self.world_size
        dp, tp = self.data_parallel_size, self.tensor_parallel_size
        if dp == "auto" and tp == "auto":
            dp, tp = self.num_nodes, world // self.num_nodes
        elif dp == "auto":
            dp = world // tp if isinstance(tp, int) and world % tp == 0 else 0
        elif tp == "auto":
            tp = world // dp if world % dp == 0 else 0
        assert isinstance(dp, int) and isinstance(tp, int)  # "auto" was resolved just above
        if dp * tp != world:
            raise ValueError(
                f"ModelParallelStrategy(data_parallel_size={self.data_parallel_size!r}, tensor_parallel_size="
                f"{self.tensor_parallel_size!r}) does not fit a job of {world} processes: the two sizes must "
                f"multiply to {world}. Pass sizes whose product is {world}, or start "
                "data_parallel_size x tensor_parallel_size processes."
            )
        return dp, tp

    def check_environment(self) -> None:
        super().check_environment()
        self.mesh_shape()  # before any process group exists: a mismatch fails in Fabric.__init__

    def setup_environment(self) -> None:
        super().setup_environment()
        if self._mesh is None:
            self._mesh = self._build_mesh()

    def _build_mesh(self) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(self.root_device.type, self.mesh_shape(), mesh_dim_names=MESH_DIMS)

    # --- modules and optimizers ---------------------------------------------------------------------------
    def module_to_device(self, module: nn.Module) -> None:
        # A meta-device model is allocated after parallelize_fn has split it, one shard per rank; moving it
        # whole first would defeat the point.
        if not _has_meta_tensors(module):
            module.to(self.root_device)

    @contextlib.contextmanager
    def module_init_context(self, empty_init: bool | None = None) -> Iterator[None]:
        """With ``empty_init=True`` modules are created on the meta device (no memory, no initialisation);
        ``fabric.setup`` allocates each rank's shard and calls ``reset_parameters()``. Otherwise as usual."""
        if not empty_init:
            with super().module_init_context(empty_init):
                yield
            return
        with torch.device("meta"), self.precision.module_init_context():
            yield

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Run ``parallelize_fn(module, device_mesh)``, then allocate and initialise a meta-device model.

        Raises:
            TypeError: the module uses FSDP1 (``FullyShardedDataParallel``), or ``parallelize_fn`` did not
                return a module.
        """
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

        mesh = self.device_mesh
        if any(isinstance(submodule, FullyShardedDataParallel) for submodule in module.modules()):
            raise TypeError(
                "ModelParallelStrategy works with FSDP2 (torch.distributed.fsdp.fully_shard) inside "
                "parallelize_fn, but the model holds FullyShardedDataParallel (FSDP1) modules. Apply "
                "fully_shard(module, mesh=device_mesh['data_parallel']) instead of wrapping."
            )
        before = dict(module.named_parameters())
        result = self.parallelize_fn(module, mesh)
        if not isinstance(result, nn.Module):
            raise TypeError(
                f"ModelParallelStrategy(parallelize_fn={_name(self.parallelize_fn)}) returned "
                f"{type(result).__name__}, but it must return the parallelized model (an nn.Module). "
                "End the function with `return model`."
            )
        if _has_meta_tensors(result):
            _materialize(result, self.root_device)
        dp = self.mesh_shape()[0]
        if dp > 1 and not any(isinstance(submodule, FSDPModule) for submodule in result.modules()):
            warnings.warn(
                f"ModelParallelStrategy: data_parallel_size={dp}, but parallelize_fn applied no fully_shard, "
                "so nothing averages gradients over the data-parallel ranks and their models will drift "
                "apart. Call fully_shard(module, mesh=device_mesh['data_parallel']) in parallelize_fn.",
                stacklevel=2,
            )
        self._replaced.record(before, result)
        self._sharded_modules.add(result)
        return result

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Point ``optimizer`` at the parallelized parameters if it was created on the model before setup.

        Raises:
            RuntimeError: ``optimizer`` already has state for parameters that parallelizing replaced.
        """
        return self._replaced.retarget(optimizer)

    # --- data ---------------------------------------------------------------------------------------------
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        # The ranks of one tensor-parallel group compute the same samples together: split over data parallel.
        kwargs = super().distributed_sampler_kwargs()
        assert kwargs is not None  # ParallelStrategy always partitions
        mesh = self.device_mesh
        kwargs.update(num_replicas=mesh["data_parallel"].size(), rank=mesh["data_parallel"].get_local_rank())
        return kwargs

    # --- training step ------------------------------------------------------------------------------------
    def no_backward_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """Accumulate gradients without the data-parallel reduction (FSDP2's ``set_requires_gradient_sync``)
        until the context ends; tensor-parallel communication is part of the computation and still runs."""
        from torch.distributed.fsdp import FSDPModule

        if not enabled:
            return contextlib.nullcontext()
        roots = _outermost(module, FSDPModule)
        if not roots:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for root in roots:
            stack.enter_context(_gradient_sync_off(root))
        return stack

    def _clip_norm(
        self, parameters: list[torch.Tensor], max_norm: float, norm_type: float, error_if_nonfinite: bool
    ) -> torch.Tensor:
        # Gradients are DTensors on different meshes: one total norm over all of them, as a plain tensor.
        return clip_by_norm(parameters, max_norm, norm_type, error_if_nonfinite)

    # --- checkpoints --------------------------------------------------------------------------------------
    def _writes_folder(self) -> bool:
        return self.save_distributed_checkpoint

    # --- how it shows --------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        parts = [f"parallelize_fn={_name(self.parallelize_fn)}"]
        if self.data_parallel_size != "auto":
            parts.append(f"data_parallel_size={self.data_parallel_size}")
        if self.tensor_parallel_size != "auto":
            parts.append(f"tensor_parallel_size={self.tensor_parallel_size}")
        if not self.save_distributed_checkpoint:
            parts.append("save_distributed_checkpoint=False")
        options = self._options_repr()
        if options:
            parts.append(options)
        return f"ModelParallelStrategy({', '.join(parts)})"


def _has_meta_tensors(module: nn.Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def _materialize(module: nn.Module, device: torch.device) -> None:
    """Allocate a meta-device model on ``device`` (each rank its shards) and let each submodule initialise
    itself with ``reset_parameters()``; warn about the ones that cannot (their memory is uninitialised)."""
    pending = [(name, sub) for name, sub in module.named_modules() if _has_own_tensors(sub)]
    module.to_empty(device=device)
    uninitialised: list[str] = []
    with torch.no_grad():
        for name, submodule in pending:
            reset = getattr(submodule, "reset_parameters", None)
            if callable(reset):
                reset()
            else:
                uninitialised.append(name or type(module).__name__)
    if uninitialised:
        warnings.warn(
            "The model was created on the meta device (fabric.init_module(empty_init=True)); after "
            "fabric.setup its tensors hold uninitialised memory in these submodules, which have no "
            f"reset_parameters(): {', '.join(uninitialised)}. Initialise them yourself right after "
            "fabric.setup (e.g. model.init_weights()), or give them a reset_parameters() method.",
            stacklevel=3,
        )


def _has_own_tensors(module: nn.Module) -> bool:
    return any(True for _ in (*module.parameters(recurse=False), *module.buffers(recurse=False)))


def _outermost(module: nn.Module, kind: type) -> list[nn.Module]:
    """The submodules of type ``kind`` (``module`` included) not inside another one of that type."""
    if isinstance(module, kind):
        return [module]
    found: list[nn.Module] = []
    for child in module.children():
        found.extend(_outermost(child, kind))
    return found


def _name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", None) or repr(function)
