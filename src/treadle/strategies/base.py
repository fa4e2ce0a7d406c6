"""What a strategy does: place processes, wrap modules and optimizers, and communicate between ranks.

The defaults here are those of one process on one device, so a single-device strategy overrides almost
nothing and a distributed one overrides what it changes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from treadle import checkpoint
from treadle.accelerators import Accelerator
from treadle.precision import Precision
from treadle.precision.base import inherits
from treadle.strategies.environment import ProcessEnvironment

if TYPE_CHECKING:
    from treadle.async_save import BackgroundWriter

T = TypeVar("T")
ReduceOp = Literal["mean", "sum", "max", "min"]
REDUCE_OPS: tuple[str, ...] = ("mean", "sum", "max", "min")


def parse_reduce_op(reduce_op: object) -> ReduceOp:
    """``"mean"``/``"sum"``/``"max"``/``"min"``, or a ``torch.distributed.ReduceOp`` of those, as a name."""
    name = str(getattr(reduce_op, "name", reduce_op)).lower().replace("avg", "mean")
    if name not in REDUCE_OPS:
        raise ValueError(
            f"Fabric.all_reduce(reduce_op={reduce_op!r}) is not supported. "
            f"Choose one of: {', '.join(map(repr, REDUCE_OPS))}."
        )
    return name  # type: ignore[return-value]  # checked against REDUCE_OPS just above


class Strategy:
    """One process driving one device. Distributed strategies override placement, wrapping and collectives.

    Fabric calls ``connect`` once with the parsed accelerator, precision, device indices and environment,
    before anything else.
    """

    name: ClassVar[str] = "single_device"

    def __init__(self) -> None:
        self.accelerator: Accelerator | None = None
        self.precision: Precision = Precision()
        self.device_indices: list[int] = [0]
        self.num_nodes = 1
        self.environment = ProcessEnvironment()

    def connect(
        self,
        accelerator: Accelerator,
        precision: Precision,
        device_indices: list[int],
        num_nodes: int,
        environment: ProcessEnvironment,
    ) -> None:
        """Attach the parsed accelerator, precision, device indices and launcher environment (once)."""
        if self.accelerator is not None:
            raise ValueError(
                f"This {type(self).__name__} already belongs to another Fabric; a strategy holds one run's "
                f"device, precision and processes. Create a new one per Fabric, e.g. Fabric(strategy={type(self).__name__}())."
            )
        self.accelerator = accelerator
        self.precision = precision
        self.device_indices = device_indices
        self.num_nodes = num_nodes
        self.environment = environment
        self.check_environment()

    def check_environment(self) -> None:
        """Raise if the launcher started a job this strategy cannot run (called by ``connect``)."""
        if self.environment.launched and self.environment.world_size > 1:
            raise ValueError(
                f"Fabric(strategy={self.name!r}) runs a single process, but the launcher started "
                f"{self.environment.world_size} (WORLD_SIZE={self.environment.world_size}). Use strategy='ddp', "
                "'fsdp' or 'auto', or start one process."
            )
        requested = len(self.device_indices) * self.num_nodes
        if requested > 1:
            raise ValueError(
                f"Fabric(strategy={self.name!r}) runs one process on one device, but devices={len(self.device_indices)} "
                f"and num_nodes={self.num_nodes} ask for {requested}. Use strategy='ddp' (or 'auto'), or devices=1."
            )

    # --- where this process is -------------------------------------------------------------------------
    @property
    def root_device(self) -> torch.device:
        """The device this process computes on."""
        assert self.accelerator is not None, "connect() runs in Fabric.__init__"
        return self.accelerator.get_device(self.device_indices[self.local_rank])

    @property
    def global_rank(self) -> int:
        """This process's index among all processes of the job."""
        return 0

    @property
    def local_rank(self) -> int:
        """This process's index on its machine."""
        return 0

    @property
    def node_rank(self) -> int:
        """This machine's index in the job."""
        return 0

    @property
    def world_size(self) -> int:
        """How many processes the job has."""
        return 1

    @property
    def is_global_zero(self) -> bool:
        """Whether this is global rank 0."""
        return self.global_rank == 0

    @property
    def launched(self) -> bool:
        """Whether every process of the job already exists (so ``launch()`` has nothing to start)."""
        return True

    # --- life cycle -----------------------------------------------------------------------------------
    def launch(self, function: Callable[..., T] | None = None, *args: Any, **kwargs: Any) -> T | None:
        """Make sure every process of the job exists, then run ``function(*args, **kwargs)`` on every rank.

        Strategies that start processes themselves override this. The caller joins the process group
        (``setup_environment``) on each rank, inside ``function`` or right after this returns.

        Args:
            function: what to run on every rank; None when each process simply continues the script.

        Returns:
            ``function``'s result on global rank 0 (in the process that called ``launch``), or None.
        """
        if function is None:
            return None
        return function(*args, **kwargs)

    def setup_environment(self) -> None:
        """Bind this process to its device (and, in subclasses, join the process group)."""
        assert self.accelerator is not None, "connect() runs in Fabric.__init__"
        self.accelerator.setup_device(self.root_device)

    def teardown(self) -> None:
        """Release what the strategy and accelerator took (process groups, device memory)."""
        if self.accelerator is not None:
            self.accelerator.teardown()

    # --- modules, optimizers, data --------------------------------------------------------------------
    def setup_module(self, module: nn.Module) -> nn.Module:
        """Wrap ``module`` for this strategy (DDP, FSDP); the module is already on its device."""
        return module

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Prepare an optimizer for this strategy (e.g. point it at sharded parameters)."""
        return optimizer

    def module_to_device(self, module: nn.Module) -> None:
        """Move ``module`` to this process's device."""
        module.to(self.root_device)

    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        """Arguments for a DistributedSampler, or None when data needs no partitioning."""
        return None

    @contextlib.contextmanager
    def module_init_context(self, empty_init: bool | None = None) -> Iterator[None]:
        """Context for creating modules: on the device, in the precision's dtype, optionally uninitialised."""
        device_context: contextlib.AbstractContextManager[Any] = self.root_device
        empty_context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if empty_init:
            # Weights are about to be overwritten by a checkpoint: skip the (slow) random initialisation.
            empty_context = SkipInit()
        with device_context, empty_context, self.precision.module_init_context():
            yield

    @contextlib.contextmanager
    def tensor_init_context(self) -> Iterator[None]:
        """Context for creating tensors on the device, in the precision's dtype."""
        with self.root_device, self.precision.tensor_init_context():
            yield

    # --- training step --------------------------------------------------------------------------------
    def backward(self, tensor: torch.Tensor, module: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        """Backpropagate ``tensor`` through the precision (which may scale it)."""
        if args or kwargs:
            self.precision.backward(tensor, *args, **kwargs)
        else:
            self.precision.backward(tensor)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        """Step ``optimizer`` through the precision (which runs the grad scaler, if any)."""
        return self.precision.optimizer_step(optimizer, **kwargs)

    @property
    def passes_through(self) -> bool:
        """Whether `backward` and `optimizer_step` do exactly ``tensor.backward()`` and ``optimizer.step()``.

        True when neither this strategy nor its precision changes them (every built-in strategy, and every
        precision but ``16-mixed``). Fabric then calls those itself: a tiny model's step is a few hundred
        microseconds, and the layers between would add about one percent to it. Fabric reads it when a
        module or optimizer is set up, so replace methods before ``setup``.
        """
        return inherits(self, Strategy, ("backward", "optimizer_step")) and self.precision.passes_through

    def clip_gradients(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        clip_val: float | None,
        max_norm: float | None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor | None:
        """``Fabric.clip_gradients``: by value or by norm, whichever of `clip_val` and `max_norm` is given."""
        if max_norm is not None and clip_val is None:
            return self.clip_gradients_norm(
                module, optimizer, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
            )
        if clip_val is not None and max_norm is None:
            self.clip_gradients_value(module, optimizer, clip_val)
            return None
        raise ValueError(
            f"Fabric.clip_gradients(clip_val={clip_val!r}, max_norm={max_norm!r}): give exactly one of them."
        )

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor:
        """Unscale, then clip the gradients of ``optimizer``'s parameters to a total norm; returns the norm."""
        self.precision.unscale_gradients(optimizer)
        if self.precision.scaler is not None:
            # Overflowing gradients are routine under a grad scaler: it skips that step and lowers the scale.
            # Raising here would turn that normal event into a crash.
            error_if_nonfinite = False
        return self._clip_norm(self._parameters_with_grads(optimizer), max_norm, norm_type, error_if_nonfinite)

    def _clip_norm(
        self, parameters: list[torch.Tensor], max_norm: float, norm_type: float, error_if_nonfinite: bool
    ) -> torch.Tensor:
        # What clips, once unscaled: torch's, unless gradients need another way to a total norm.
        return torch.nn.utils.clip_grad_norm_(
            parameters, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )

    def clip_gradients_value(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, clip_val: float
    ) -> None:
        """Unscale, then clamp every gradient of ``optimizer``'s parameters to ``[-clip_val, clip_val]``."""
        self.precision.unscale_gradients(optimizer)
        torch.nn.utils.clip_grad_value_(self._parameters_with_grads(optimizer), clip_val)

    @staticmethod
    def _parameters_with_grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        """The parameters of ``optimizer`` that have a gradient this step (the ones clipping acts on)."""
        return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]

    def no_backward_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip gradient synchronisation during ``backward`` (nothing to skip with one process)."""
        return contextlib.nullcontext()

    # --- collectives (identities with one process) --------------------------------------------------------
    def barrier(self, name: str | None = None) -> None:
        """Wait until every rank reaches this point."""

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Send ``obj`` from rank ``src`` to every rank."""
        return obj

    def all_gather(self, tensor: torch.Tensor, sync_grads: bool = False, group: Any = None) -> torch.Tensor:
        """Gather ``tensor`` from every rank on a new first dimension of size ``world_size``."""
        return tensor.unsqueeze(0)

    def all_reduce(
        self, tensor: torch.Tensor, reduce_op: ReduceOp = "mean", group: Any = None
    ) -> torch.Tensor:
        """Reduce ``tensor`` over ranks with ``reduce_op``, returning a new tensor."""
        return tensor

    def all_reduce_bool(self, flag: bool, mode: Literal["any", "all"] = "any") -> bool:
        """Reduce a boolean across ranks so every rank takes the same decision."""
        return bool(flag)

    # --- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(
        self,
        path: str,
        state: Mapping[str, Any],
        filter: Mapping[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        """Write ``state`` to ``path`` atomically (global rank 0 writes; everyone waits)."""
        self.run_on_rank_zero(
            lambda: checkpoint.save_checkpoint(path, state, filter=filter), f"write the checkpoint {path!r}"
        )

    def save_checkpoint_async(
        self,
        path: str,
        state: Mapping[str, Any],
        filter: Mapping[str, Callable[[str, Any], bool]] | None,
        writer: BackgroundWriter,
    ) -> None:
        """Copy ``state`` into host memory now and let ``writer`` write it to ``path`` (global rank 0).

        Every rank calls it; they return once rank 0 has its copy, and all raise if the copy failed."""
        from treadle.async_save import host_copy

        copies: list[dict[str, Any]] = []
        self.run_on_rank_zero(
            lambda: copies.append(host_copy(checkpoint.to_saveable(state, filter))),
            f"copy the checkpoint {path!r} for its background write",
        )
        if copies:
            data = copies[0]
            writer.submit(lambda: checkpoint.atomic_save(data, path), path)

    def run_on_rank_zero(self, action: Callable[[], object], what: str) -> None:
        """Run ``action`` on global rank 0 only, with every rank returning once it is done.

        With one process that is just ``action()``. Multi-process strategies make the other ranks wait for
        rank 0 and raise too if it failed, so that no rank hangs at the next collective.

        Args:
            action: The work only rank 0 does, such as writing a file.
            what: The work in words (``"write the checkpoint 'last.pt'"``) for the other ranks' error.

        Raises:
            Exception: Whatever ``action`` raised (on rank 0); a RuntimeError naming ``what`` elsewhere.

        Example:
            >>> strategy = Strategy()
            >>> strategy.run_on_rank_zero(lambda: print("only once"), "print a line")
            only once
        """
        action()

    def load_checkpoint(
        self, path: str, state: dict[str, Any] | None, strict: bool, weights_only: bool
    ) -> dict[str, Any]:
        """Read ``path`` and restore ``state`` in place; returns the entries not asked for.

        ``path`` may also be a sharded folder written by any number of ranks (FSDP, model parallel): each
        model then takes its full tensors from the shards."""
        if os.path.isdir(path):  # the sharded-checkpoint module is imported only for folders
            from treadle.strategies.fsdp_checkpoint import is_sharded_folder, load

            if is_sharded_folder(path):
                return load(self, path, state, strict=strict, weights_only=weights_only)
        return checkpoint.load_checkpoint(path, state, strict=strict, weights_only=weights_only)

    def sharded_modules(self) -> list[nn.Module]:
        """The modules this strategy has sharded (none, unless it shards)."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SkipInit(TorchFunctionMode):
    """Turn the ``torch.nn.init`` functions into no-ops: parameters are allocated but left as they come.

    ``torch.nn.init`` dispatches through torch-function modes, so this works for any layer that initialises
    itself with them, without touching a single class.
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)
