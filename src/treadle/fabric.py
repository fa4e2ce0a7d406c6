"""Fabric: the façade a hand-written training loop talks to. It parses settings and delegates.

Devices live in ``accelerators``, numerics in ``precision``, processes and communication in ``strategies``,
files in ``checkpoint``, and callbacks in ``callbacks``. Nothing here asks which concrete strategy it has.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import torch
from torch import nn
from torch.utils.data import DataLoader

from treadle import checkpoint
from treadle import seed as seeding
from treadle.accelerators import Accelerator
from treadle.callbacks import CallbackDispatcher, HookRegistry
from treadle.callbacks.plan import MethodWrapper
from treadle.data import FabricDataLoader, prepare_dataloader
from treadle.loggers.base import metric_value, parse_loggers
from treadle.precision import Precision, PrecisionInput
from treadle.settings import build_runtime
from treadle.strategies import ReduceOp, Strategy, parse_reduce_op
from treadle.tree import map_tensors, move_to_device, numbers_to_tensors, scalars_to_tensors
from treadle.wrappers import (
    BackwardGuard,
    FabricModule,
    FabricOptimizer,
    check_module,
    check_unwrapped,
    unwrap,
    wrap_optimizer,
)

if TYPE_CHECKING:
    from treadle.async_save import BackgroundWriter

T = TypeVar("T")
# The set-up module and optimizers are typed as what the user passed: the module wrapper forwards attribute
# access to the module, and a set-up optimizer is an instance of the user's optimizer class. So mypy checks
# `model.my_method()` and `optimizer.param_groups` in user code against the user's own classes.
_M = TypeVar("_M", bound=nn.Module)
_O = TypeVar("_O", bound=torch.optim.Optimizer)
_O2 = TypeVar("_O2", bound=torch.optim.Optimizer)
_D = TypeVar("_D")
# `launch()` without a function (every process runs on through the script) is told apart from an explicit
# `launch(None)`, which is almost always `launch(train(fabric))` with a train that returned nothing.
_NO_FUNCTION: Any = object()
StateFilter = Mapping[str, Callable[[str, Any], bool]]


class Fabric:
    """Devices, precision, distributed training, checkpoints, logging and callbacks for your own loop.

    Args:
        accelerator: ``"cpu"``, ``"cuda"``, ``"mps"``, ``"gpu"`` (any GPU), ``"auto"``, or an Accelerator.
        strategy: ``"auto"``, ``"single_device"``, ``"ddp"``, ``"ddp_spawn"``, ``"ddp_fork"``
            (``"ddp_notebook"``), ``"fsdp"``, Lightning's other names, or a Strategy.
        devices: how many devices (int), which ones (list of indices), ``-1`` for all, or ``"auto"``.
        num_nodes: how many machines the job spans.
        precision: ``"32-true"``, ``"64-true"``, ``"16-mixed"``, ``"bf16-mixed"``, ``"16-true"``,
            ``"bf16-true"``, the aliases ``"64"``, ``"32"``, ``"16"``, ``"bf16"``, ``64``, ``32``, ``16``,
            or a Precision.
        callbacks: one object or a list of objects whose methods ``call`` invokes by name.
        loggers: one logger or a list of loggers (see ``treadle.loggers``); metrics go to all of them.
        strict_hooks: if True, a callback method named ``on_*`` that is not a known hook is an error, and so
            is ``call()`` of a name that is neither known nor implemented by any callback.
        hooks: names of your own hooks, known before ``callbacks`` are checked for misspellings.
        plugins: one object or a list, as in Lightning Fabric, of the kinds treadle has: a Precision
            (instead of ``precision=``) and a ``treadle.strategies.ProcessEnvironment`` (who this process is,
            instead of what the launcher's environment variables say).

    Raises:
        ValueError: an argument is not a valid choice; the message lists the valid ones.
        TypeError: an argument has the wrong type (e.g. ``hooks`` is not a list of names).

    Example::

        fabric = Fabric(accelerator="cpu", precision="bf16-mixed", callbacks=[MyCallback()])
        model, optimizer = fabric.setup(model, optimizer)
        loader = fabric.setup_dataloaders(loader)
        for batch in loader:
            loss = model(batch).mean()
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            fabric.call("on_train_batch_end", loss=loss)
    """

    def __init__(
        self,
        accelerator: str | Accelerator = "auto",
        strategy: str | Strategy = "auto",
        devices: int | str | Sequence[int] = "auto",
        num_nodes: int = 1,
        precision: PrecisionInput | None = "32-true",
        callbacks: Any = None,
        loggers: Any = None,
        strict_hooks: bool = False,
        hooks: Sequence[str] = (),
        plugins: Any = None,
    ) -> None:
        if not isinstance(strict_hooks, bool):
            raise TypeError(f"Fabric(strict_hooks={strict_hooks!r}) must be True or False.")
        self._accelerator, self._precision, self._strategy = build_runtime(
            accelerator, strategy, devices, num_nodes, precision, plugins
        )
        if isinstance(hooks, str) or not isinstance(hooks, Sequence):
            raise TypeError(
                f"Fabric(hooks={hooks!r}) must be a list of hook names, e.g. hooks=['on_my_event']."
            )
        self._callbacks = CallbackDispatcher(
            callbacks,
            strict_hooks=strict_hooks,
            global_rank=self._strategy.global_rank,
            registry=HookRegistry(hooks),
        )
        # `fabric.call` is the dispatcher's own bound method: the documented method below would add a
        # Python frame and a re-packing of **kwargs to every call in the loop.
        self.call = self._callbacks.call  # type: ignore[method-assign]
        self._plans = self._callbacks.plans
        self._loggers = parse_loggers(loggers)
        # Keyword arguments added to the hooks Fabric fires itself (the Trainer adds trainer=); shared by
        # reference with the optimizers it wraps.
        self._hook_arguments: dict[str, Any] = {"fabric": self}
        self._environment_ready = False
        # None until a module or optimizer is set up; then whether `backward` may call tensor.backward()
        # itself.
        self._direct_backward: bool | None = None
        # Set while `backward` runs: outputs of set-up models check it when gradients reach them, so that a
        # `loss.backward()` which skips Fabric is an error where Fabric's backward does something.
        self._backward_guard = BackwardGuard()
        self._writer: BackgroundWriter | None = None  # made by the first save(async_save=True)

    # --- who and where ------------------------------------------------------------------------------------
    @property
    def accelerator(self) -> Accelerator:
        """The hardware kind this Fabric runs on."""
        return self._accelerator

    @property
    def strategy(self) -> Strategy:
        """How processes are placed and communicate (single device, DDP, FSDP)."""
        return self._strategy

    @property
    def precision(self) -> Precision:
        """The numeric precision: casting, autocast and the grad scaler."""
        return self._precision

    @property
    def device(self) -> torch.device:
        """The device this process computes on."""
        return self._strategy.root_device

    @property
    def global_rank(self) -> int:
        """This process's index among all processes of the job."""
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        """This process's index among the processes on its machine."""
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        """This machine's index among the job's machines."""
        return self._strategy.node_rank

    @property
    def world_size(self) -> int:
        """How many processes the job has."""
        return self._strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        """Whether this is global rank 0, where files and logs are written."""
        return self._strategy.is_global_zero

    @property
    def loggers(self) -> list[Any]:
        """Every logger, in the order given."""
        return list(self._loggers)

    @property
    def logger(self) -> Any:
        """The first logger; raises if there is none."""
        if not self._loggers:
            raise AttributeError(
                "This Fabric has no logger. Pass one, e.g. Fabric(loggers=CSVLogger('logs'))."
            )
        return self._loggers[0]

    # --- callbacks ----------------------------------------------------------------------------------------
    @property
    def callbacks(self) -> tuple[Any, ...]:
        """The registered callbacks, in the order ``call`` visits them (read-only)."""
        return self._callbacks.callbacks

    def call(self, hook_name: str, /, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``hook_name`` on every callback that has it, in registration order.

        Keyword arguments a callback's method does not accept are not passed to it, so a callback declares
        only what it needs. Callbacks without the method are skipped.

        Args:
            hook_name: the method name, e.g. ``"on_train_batch_end"``.
            *args: passed unchanged to every callback.
            **kwargs: passed to each callback that accepts them.

        Returns:
            The values the called callbacks returned, in order.

        Raises:
            TypeError: ``hook_name`` is not a str, or a callback requires an argument nobody passed.

        Example::

            fabric.call("on_train_batch_end", loss=loss, output=output)
        """
        return self._callbacks.call(hook_name, *args, **kwargs)

    def register_hook(self, name: str) -> None:
        """Declare a hook of your own so that misspellings of it in callbacks are reported."""
        self._callbacks.register_hook(name)

    def add_callback(self, callback: object) -> None:
        """Register one more callback; it is called after the existing ones."""
        self._callbacks.add(callback)

    def remove_callback(self, callback: object) -> None:
        """Unregister ``callback`` (compared by identity)."""
        self._callbacks.remove(callback)

    @contextlib.contextmanager
    def hook_arguments(self, **kwargs: Any) -> Generator[None, None, None]:
        """Pass extra keyword arguments to the hooks Fabric fires itself, inside this block.

        Fabric's own hooks always receive ``fabric=``; a loop built on Fabric can add its own context, as the
        Trainer adds ``trainer=``. Callbacks that do not declare an argument do not receive it.

        Example::

            with fabric.hook_arguments(trainer=self):
                fabric.backward(loss)  # on_before_backward(loss, fabric, trainer)
        """
        reserved = {"loss", "optimizer", "module", "fabric", "strategy"} & kwargs.keys()
        if reserved:
            raise ValueError(
                f"Fabric.hook_arguments() cannot set {sorted(reserved)}: Fabric's hooks pass these themselves."
            )
        previous = dict(self._hook_arguments)
        self._hook_arguments.update(kwargs)
        try:
            yield
        finally:
            self._hook_arguments.clear()
            self._hook_arguments.update(previous)

    def instrument_callbacks(self, wrapper: MethodWrapper | None) -> None:
        """Route every callback method that ``call`` invokes through ``wrapper(callback, hook, method)``.

        This is how the Profiler times each hook of each callback. ``None`` removes the wrapper.
        """
        self._callbacks.wrap_methods(wrapper)

    # --- processes ----------------------------------------------------------------------------------------
    def launch(self, function: Callable[..., T] = _NO_FUNCTION, *args: Any, **kwargs: Any) -> T | None:
        """Start the processes of the job (if the launcher has not) and join them together.

        Without ``function`` every process continues running the script after this call. With it,
        ``function(fabric, *args, **kwargs)`` runs on every rank and rank 0's result is returned.

        Raises:
            TypeError: ``function`` is not callable, e.g. ``launch(train(fabric))``, which calls ``train``
                here, once, instead of passing it: write ``launch(train)``.

        Example::

            fabric = Fabric(strategy="ddp", devices=2)
            fabric.launch()
        """
        if function is _NO_FUNCTION:
            function = None  # type: ignore[assignment]
        elif not callable(function):
            raise TypeError(
                f"Fabric.launch() got {function!r} ({type(function).__name__}), which is not a function. Pass "
                "the function itself, not its result: fabric.launch(train, *args) runs train(fabric, *args) on "
                "every rank (not fabric.launch(train(fabric))). Or call fabric.launch() with no argument to "
                "have every process continue the script."
            )
        if self._environment_ready:  # already launched (torchrun, or an earlier call): just run
            return None if function is None else function(self, *args, **kwargs)
        if function is None:
            self._strategy.launch(None)
            self._prepare_environment()
            return None
        return self._strategy.launch(self._run_on_rank, function, *args, **kwargs)

    def _run_on_rank(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._prepare_environment()
        return function(self, *args, **kwargs)

    def _prepare_environment(self) -> None:
        if self._environment_ready:
            return
        self._strategy.setup_environment()
        self._callbacks.set_global_rank(self._strategy.global_rank)
        self._environment_ready = True

    def _require_environment(self, method: str) -> None:
        if self._environment_ready:
            return
        if not self._strategy.launched:
            raise RuntimeError(
                f"Fabric.{method}() was called before the processes were started. "
                "Call fabric.launch() first (or start the script with torchrun / `treadle run`)."
            )
        self._prepare_environment()

    # --- setup --------------------------------------------------------------------------------------------
    @overload
    def setup(self, module: _M, /, *, move_to_device: bool = True) -> _M: ...

    @overload
    def setup(self, module: _M, optimizer: _O, /, *, move_to_device: bool = True) -> tuple[_M, _O]: ...

    @overload
    def setup(
        self, module: _M, optimizer: _O, optimizer2: _O2, /, *, move_to_device: bool = True
    ) -> tuple[_M, _O, _O2]: ...

    @overload
    def setup(
        self,
        module: nn.Module,
        *optimizers: torch.optim.Optimizer,
        scheduler: Any = None,
        move_to_device: bool = True,
    ) -> Any: ...

    def setup(
        self,
        module: nn.Module,
        *optimizers: torch.optim.Optimizer,
        scheduler: Any = None,
        move_to_device: bool = True,
    ) -> Any:
        """Prepare a model and its optimizers for the device, precision and strategy.

        Args:
            module: the model.
            *optimizers: its optimizers, created on the model's parameters.
            scheduler: an LR scheduler; returned last, unchanged.
            move_to_device: move the model to ``fabric.device`` (set False if you placed it yourself).

        Returns:
            The wrapped module alone, or ``(module, *optimizers)``, with the scheduler last if given.

        A LightningModule (anything with a ``_fabric`` attribute) is linked back as Lightning Fabric links
        it: its ``_fabric`` is this Fabric and its ``_fabric_optimizers`` the set-up optimizers, so its
        ``self.log``, ``self.logger`` and ``self.optimizers()`` work. The same user module may be set up
        again (``setup(model)``, later ``setup(model, optimizer)``); what setup returned may not.

        Example::

            model, optimizer = fabric.setup(model, optimizer)
        """
        check_module(module, "setup")
        wrapped = self._setup_module(module, move_to_device=move_to_device)
        wrapped_optimizers = [self._setup_optimizer(opt, i + 1, "setup") for i, opt in enumerate(optimizers)]
        if hasattr(wrapped.module, "_fabric"):
            setattr(wrapped.module, "_fabric_optimizers", wrapped_optimizers)  # noqa: B010  # nn.Module's setattr types
        if not optimizers and scheduler is None:
            return wrapped
        result = (wrapped, *wrapped_optimizers)
        return (*result, scheduler) if scheduler is not None else result

    def setup_module(self, module: _M, move_to_device: bool = True) -> _M:
        """Prepare a model (device, precision, strategy wrapping) without optimizers.

        Fires the hook ``on_after_setup(fabric, module)``. A LightningModule gets ``_fabric`` set to this
        Fabric (see ``setup``). The result is a ``treadle.wrappers.FabricModule``, typed as your module's
        class: it forwards attribute access to it.
        """
        return cast(_M, self._setup_module(module, move_to_device))

    def _setup_module(self, module: nn.Module, move_to_device: bool) -> FabricModule:
        check_module(module, "setup_module")
        self._require_environment("setup_module")
        module = self._precision.convert_module(module)
        if move_to_device:
            self._strategy.module_to_device(module)
        forward_module = self._strategy.setup_module(module)
        strategy = self._strategy
        # Lightning raises at `loss.backward()` where Fabric's backward does more than it: under mixed
        # precision and where the strategy or precision changes backward. Elsewhere the two are the same.
        guarded = not strategy.passes_through or self._precision.requires_fabric_backward
        wrapped = FabricModule(
            forward_module, module, self._precision, self._backward_guard if guarded else None
        )
        if hasattr(wrapped.module, "_fabric"):  # a LightningModule: self.log and self.logger go through us
            setattr(wrapped.module, "_fabric", self)  # noqa: B010
        self._direct_backward = strategy.passes_through
        self._callbacks.call("on_after_setup", module=wrapped, **self._hook_arguments)
        return wrapped

    @overload
    def setup_optimizers(self, optimizer: _O, /) -> _O: ...

    @overload
    def setup_optimizers(self, *optimizers: torch.optim.Optimizer) -> Any: ...

    def setup_optimizers(self, *optimizers: torch.optim.Optimizer) -> Any:
        """Prepare optimizers: their ``step`` goes through the precision (grad scaler) and fires hooks.

        Returns:
            One wrapped optimizer, or a tuple of them when several are given.
        """
        if not optimizers:
            raise ValueError("Fabric.setup_optimizers() needs at least one optimizer.")
        self._require_environment("setup_optimizers")
        wrapped = tuple(self._setup_optimizer(opt, i, "setup_optimizers") for i, opt in enumerate(optimizers))
        return wrapped[0] if len(wrapped) == 1 else wrapped

    def _setup_optimizer(
        self, optimizer: torch.optim.Optimizer, position: int, method: str
    ) -> FabricOptimizer:
        check_unwrapped(optimizer, position, FabricOptimizer, torch.optim.Optimizer, method)
        prepared = self._strategy.setup_optimizer(optimizer)
        # From now on `backward` must scale where the optimizer's step unscales, module set up or not.
        self._direct_backward = self._strategy.passes_through
        return wrap_optimizer(prepared, self._strategy, self._plans, self._hook_arguments)

    @overload
    def setup_dataloaders(
        self, dataloader: DataLoader[_D], /, *, use_distributed_sampler: bool = True, move_to_device: bool = True
    ) -> FabricDataLoader[_D]: ...

    @overload
    def setup_dataloaders(
        self,
        first: DataLoader[Any],
        second: DataLoader[Any],
        /,
        *more: DataLoader[Any],
        use_distributed_sampler: bool = True,
        move_to_device: bool = True,
    ) -> list[FabricDataLoader[Any]]: ...

    def setup_dataloaders(
        self, *dataloaders: DataLoader[Any], use_distributed_sampler: bool = True, move_to_device: bool = True
    ) -> FabricDataLoader[Any] | list[FabricDataLoader[Any]]:
        """Prepare dataloaders: batches arrive on ``fabric.device``; with several processes each rank reads
        its own share of the data (a DistributedSampler is put in, unless ``use_distributed_sampler=False``).

        Returns:
            One wrapped dataloader, or a list of them when several are given.
        """
        if not dataloaders:
            raise ValueError("Fabric.setup_dataloaders() needs at least one DataLoader.")
        self._require_environment("setup_dataloaders")
        device = self.device if move_to_device and self.device.type != "cpu" else None
        wrapped = []
        for position, loader in enumerate(dataloaders):
            check_unwrapped(loader, position, FabricDataLoader, DataLoader, "setup_dataloaders")
            sampler_kwargs = self._strategy.distributed_sampler_kwargs() if use_distributed_sampler else None
            loader = prepare_dataloader(loader, sampler_kwargs, global_rank=self.global_rank)
            wrapped.append(FabricDataLoader(loader, device))
        return wrapped[0] if len(wrapped) == 1 else wrapped

    # --- the training step --------------------------------------------------------------------------------
    def backward(
        self, tensor: torch.Tensor, *args: Any, model: FabricModule | None = None, **kwargs: Any
    ) -> None:
        """Compute gradients of ``tensor`` (scaled under a grad scaler, synchronised under DDP).

        Call this instead of ``loss.backward()``: under mixed precision, and where the strategy changes
        backward, ``loss.backward()`` on a set-up model's output raises (as in Lightning Fabric). Before
        any module or optimizer is set up there is nothing to scale or synchronise, and this is a plain
        ``tensor.backward(*args, **kwargs)`` (with the hooks below).

        Fires ``on_before_backward(loss)`` and ``on_after_backward()``.

        Raises:
            TypeError: ``tensor`` is not a tensor (e.g. the dict a step returned).
        """
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(_not_a_loss(tensor))
        direct = self._direct_backward
        plans = self._plans  # plans[hook]((), kwargs) is call_with(hook, kwargs), one frame sooner
        hook_arguments = self._hook_arguments
        plans["on_before_backward"]((), {"loss": tensor, **hook_arguments})
        guard = self._backward_guard
        guard.inside = True
        try:
            if direct is None:  # nothing set up yet: nothing to scale or synchronise
                tensor.backward(*args, **kwargs)  # type: ignore[no-untyped-call]
            elif direct and not (args or kwargs):  # nothing to scale: skip the strategy and precision layers
                tensor.backward()  # type: ignore[no-untyped-call]
            else:
                self._strategy.backward(tensor, model, *args, **kwargs)
        finally:
            guard.inside = False
        plans["on_after_backward"]((), hook_arguments)

    def clip_gradients(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        clip_val: float | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> torch.Tensor | None:
        """Clip gradients by value (``clip_val``) or by total norm (``max_norm``); unscales them first.

        Returns:
            The total norm before clipping when ``max_norm`` is given, else None.

        Raises:
            ValueError: both or neither of ``clip_val`` and ``max_norm`` are given.
        """
        return self._strategy.clip_gradients(
            module, unwrap(optimizer), clip_val, max_norm, norm_type, error_if_nonfinite
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision's forward context, for code that runs outside the wrapped module's forward."""
        return self._precision.forward_context()

    def no_backward_sync(
        self, module: FabricModule, enabled: bool = True
    ) -> contextlib.AbstractContextManager[Any]:
        """Skip gradient synchronisation inside this context (for gradient accumulation).

        Example::

            with fabric.no_backward_sync(model, enabled=not is_last_micro_batch):
                fabric.backward(model(batch).mean())
        """
        if not isinstance(module, FabricModule):
            raise TypeError(
                "Fabric.no_backward_sync() takes the module returned by fabric.setup(), "
                f"got {type(module).__name__}."
            )
        return self._strategy.no_backward_sync(module._forward_module, enabled)

    # --- placement and creation ---------------------------------------------------------------------------
    def to_device(self, obj: T) -> T:
        """Move a module, a tensor, or tensors nested in lists/dicts/tuples/dataclasses to ``fabric.device``."""
        if isinstance(obj, nn.Module):
            self._strategy.module_to_device(obj)
            return obj
        return move_to_device(obj, self.device)  # type: ignore[no-any-return]

    def init_module(self, empty_init: bool | None = None) -> contextlib.AbstractContextManager[None]:
        """Create modules directly on the device, in the precision's dtype.

        Args:
            empty_init: skip weight initialisation (the weights will be loaded from a checkpoint next).
        """
        self._require_environment("init_module")
        return self._strategy.module_init_context(empty_init)

    def init_tensor(self) -> contextlib.AbstractContextManager[None]:
        """Create tensors directly on the device, in the precision's dtype."""
        self._require_environment("init_tensor")
        return self._strategy.tensor_init_context()

    # --- between processes --------------------------------------------------------------------------------
    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    def barrier(self, name: str | None = None) -> None:
        """Wait until every process reaches this line."""
        self._strategy.barrier(name)

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Send ``obj`` (any picklable object) from rank ``src`` to every rank."""
        return self._strategy.broadcast(obj, src)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather tensors or numbers, alone or nested in collections, from every rank.

        Each tensor comes back with a new first dimension of size ``world_size`` (also with one process, so
        code written for N ranks runs unchanged on one). Python ints, floats and bools (and numpy values)
        become tensors first, keeping their kind: ``fabric.all_gather(3)`` is ``tensor([3, 3])`` on two
        ranks. ``sync_grads=True`` lets gradients flow back.

        Example::

            correct = fabric.all_gather(num_correct).sum().item()
        """
        strategy = self._strategy
        extra = {} if group is None else {"group": group}
        tensors = scalars_to_tensors(data, self.device)
        return map_tensors(
            tensors, lambda tensor: strategy.all_gather(tensor, sync_grads=sync_grads, **extra)
        )

    def all_reduce(self, data: Any, group: Any = None, reduce_op: ReduceOp | Any = "mean") -> Any:
        """Reduce tensors or numbers, alone or nested in collections, across ranks.

        Args:
            data: a tensor, a number, or a dict/list/tuple of them; numbers become float tensors.
            group: the process group (default: all processes).
            reduce_op: ``"mean"``, ``"sum"``, ``"max"``, ``"min"``, or a ``torch.distributed.ReduceOp`` of those.

        Returns:
            ``data`` with every tensor replaced by its reduction (a new tensor).
        """
        op = parse_reduce_op(reduce_op)
        strategy = self._strategy
        extra = {} if group is None else {"group": group}
        tensors = numbers_to_tensors(data, self.device)
        return map_tensors(tensors, lambda tensor: strategy.all_reduce(tensor, op, **extra))

    def all_reduce_bool(self, flag: bool, mode: str = "any") -> bool:
        """Reduce a boolean across ranks (``"any"`` or ``"all"``) so every rank takes the same decision."""
        if mode not in ("any", "all"):
            raise ValueError(f"Fabric.all_reduce_bool(mode={mode!r}) must be 'any' or 'all'.")
        return self._strategy.all_reduce_bool(bool(flag), mode)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def rank_zero_first(self, local: bool = False) -> Generator[None, None, None]:
        """Let rank 0 (per node if ``local``) run the block first, e.g. to download or cache data once."""
        rank = self.local_rank if local else self.global_rank
        if rank != 0:
            self.barrier("rank_zero_first")
            yield
            return
        try:
            yield
        finally:
            # Also when rank 0 fails: the others must not wait at the barrier until the timeout.
            self.barrier("rank_zero_first")

    @staticmethod
    def seed_everything(
        seed: int | None = None, workers: bool | None = None, verbose: bool = True, deterministic: bool = False
    ) -> int:
        """Seed python, numpy (if installed) and torch, and dataloader workers unless ``workers=False``;
        ``deterministic=True`` also makes the kernels repeatable (see ``treadle.seed.seed_everything``).

        Returns:
            The seed used (a random one when ``seed`` is None, printed if ``verbose``).
        """
        chosen = seeding.seed_everything(
            seed, workers=True if workers is None else workers, deterministic=deterministic
        )
        if seed is None and verbose:
            print(f"seed_everything: using seed {chosen}")
        return chosen

    # --- logging ------------------------------------------------------------------------------------------
    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Send one metric to every logger (on global rank 0).

        Raises:
            ValueError: ``value`` is a tensor with more than one element.
        """
        self.log_dict({name: value}, step=step)

    def log_dict(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Send several metrics to every logger (on global rank 0)."""
        if not self._loggers or not self.is_global_zero:
            return
        numbers = {name: metric_value(name, value) for name, value in metrics.items()}
        for logger in self._loggers:
            logger.log_metrics(numbers, step=step)

    # --- checkpoints --------------------------------------------------------------------------------------
    def save(
        self,
        path: str | os.PathLike[str],
        state: Mapping[str, Any],
        filter: StateFilter | None = None,
        *,
        async_save: bool = False,
    ) -> None:
        """Save modules, optimizers, anything with ``state_dict`` and plain values, atomically.

        Args:
            path: the file to write; parent folders are created.
            state: e.g. ``{"model": model, "optimizer": optimizer, "step": step}``.
            filter: per key, a predicate ``(name, value) -> bool`` selecting state-dict entries to keep.
            async_save: return once the state is copied to host memory and write the file in a background
                thread. The next save, :meth:`wait_for_saves` and the end of the process wait for it; the
                first of them raises its error. Until it is written, ``path`` holds the previous file.

        Raises:
            TypeError: a value would not load back with ``weights_only=True`` (an ``argparse.Namespace``,
                a function, a class); the message names its key and how to store it.
            OSError: the file could not be written (a full disk, no permission); the message names `path`
                and the previous file at `path` is kept. With ``async_save``, raised by the next save or
                :meth:`wait_for_saves`.
        """
        if not isinstance(async_save, bool):
            raise TypeError(f"Fabric.save(async_save={async_save!r}) must be True or False.")
        checkpoint.check_path(path, "Fabric.save(path=...)", file=False)  # a sharded save writes a folder
        self.wait_for_saves()
        if async_save:
            from treadle.async_save import BackgroundWriter

            if self._writer is None:
                self._writer = BackgroundWriter()
            self._strategy.save_checkpoint_async(os.fspath(path), state, filter, self._writer)
        else:
            self._strategy.save_checkpoint(os.fspath(path), state, filter=filter)

    def after_save(self, follow_up: Callable[[], object]) -> None:
        """Run ``follow_up`` once the checkpoint being written in the background is on disk.

        It runs in the writing thread right after a successful write (never after a failed one), on the
        rank that writes; where no write is in flight (other ranks, synchronous saves) it runs at once.
        ``ModelCheckpoint(async_save=True)`` links ``last.ckpt`` and deletes displaced files this way.

        Example::

            fabric.save("step-100.pt", state, async_save=True)
            fabric.after_save(lambda: print("step-100.pt is on disk"))
        """
        if not callable(follow_up):
            raise TypeError(
                f"Fabric.after_save(follow_up={follow_up!r}) must be a function taking no arguments, e.g. "
                "fabric.after_save(lambda: print('saved'))."
            )
        if self._writer is None:
            follow_up()
        else:
            self._writer.then(follow_up)

    def wait_for_saves(self) -> None:
        """Wait until a save started with ``async_save=True`` is on disk (every rank must call it).

        Raises:
            Exception: the background write's error on the rank where it failed; a RuntimeError on the
                other ranks, so that no rank goes on alone.
        """
        writer = self._writer
        if writer is None:
            return
        if self._strategy.world_size == 1:
            writer.wait()
            return
        error: Exception | None = None
        try:
            writer.wait()
        except Exception as raised:
            error = raised
        failed = self._strategy.all_reduce_bool(error is not None, "any")
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(
                "Another rank failed to finish writing the previous checkpoint in the background; its error "
                "is reported by that rank. The checkpoint that was there before is kept."
            )

    def load(
        self,
        path: str | os.PathLike[str],
        state: dict[str, Any] | None = None,
        strict: bool = True,
        weights_only: bool | None = True,
    ) -> dict[str, Any]:
        """Load a checkpoint written by ``save``, restoring the objects in ``state`` in place.

        ``weights_only=None`` (Lightning Fabric's default) means True. Every record's CRC-32 is checked
        first, so a file whose bytes changed after saving raises ``CorruptCheckpointError`` naming the key.

        Returns:
            The checkpoint entries that ``state`` did not ask for (the whole checkpoint if ``state`` is None).
        """
        checkpoint.check_path(path, "Fabric.load(path=...)", file=False)
        self.wait_for_saves()  # the file may still be on its way
        return self._strategy.load_checkpoint(
            os.fspath(path), state, strict=strict, weights_only=True if weights_only is None else weights_only
        )

    def load_raw(
        self,
        path: str | os.PathLike[str],
        obj: nn.Module | torch.optim.Optimizer,
        strict: bool = True,
        weights_only: bool | None = None,
    ) -> None:
        """Load a bare state dict (``torch.save(model.state_dict())``) into a module or optimizer.

        It always loads with ``weights_only=True``: a bare state dict holds nothing else. None (the
        default, as in Lightning Fabric) and True mean that; False is refused.
        """
        if weights_only is False:
            raise ValueError(
                "Fabric.load_raw(weights_only=False): a bare state dict holds only tensors and plain values, "
                "so it always loads with weights_only=True. Use fabric.load() for checkpoints with other objects."
            )
        checkpoint.check_path(path, "Fabric.load_raw(path=...)")
        checkpoint.load_raw(os.fspath(path), unwrap(obj), strict=strict)

    def __repr__(self) -> str:
        return (
            f"Fabric(accelerator={self._accelerator.name!r}, strategy={self._strategy!r}, "
            f"precision={self._precision.name!r}, world_size={self.world_size})"
        )


def _not_a_loss(value: object) -> str:
    if isinstance(value, Mapping):
        keys = list(value)
        example = "loss" if "loss" in keys else (keys[0] if keys else "loss")
        return (
            f"Fabric.backward() takes the loss tensor, not a {type(value).__name__} (keys: {keys!r}). Pass the "
            f"tensor to differentiate, e.g. fabric.backward(output[{example!r}])."
        )
    return (
        f"Fabric.backward() takes the loss tensor, not {type(value).__name__} {value!r:.80}. Pass the scalar "
        "tensor to differentiate, e.g. fabric.backward(loss)."
    )


# After `import treadle as L`, Lightning's paths `L.fabric.strategies.fsdp.FSDPStrategy` and
# `L.fabric.utilities.types.LRScheduler` resolve to treadle's packages of the same names.
_PACKAGES = ("accelerators", "loggers", "precision", "strategies", "utilities", "wrappers")


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        import importlib

        return importlib.import_module(f"treadle.{name}")
    raise AttributeError(f"module 'treadle.fabric' has no attribute {name!r}")
