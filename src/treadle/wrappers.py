"""What ``Fabric.setup`` returns: modules and optimizers that behave like the originals.

A wrapped module runs its forward in the precision's context; a wrapped optimizer fires the step hooks and
steps through the grad scaler where there is one. Everything else is forwarded to the original object, so
user code that reads attributes, state dicts or ``isinstance`` keeps working. (The set-up dataloader is
``treadle.data.FabricDataLoader``.)
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from treadle.checkpoint import unwrap_compiled
from treadle.precision import Precision
from treadle.precision.base import inherits
from treadle.strategies import Strategy
from treadle.tree import map_leaves, map_tensors

_MISSING = object()

# The registries behind torch.nn.modules.module.register_module_forward_hook and its siblings: dicts that
# torch mutates in place, so holding them is enough to see hooks registered later. They are private: should
# a torch release rename one, the stand-in (never empty) sends every call down nn.Module's own path.
_RENAMED = {"renamed in this torch release": None}
_global_forward_hooks = getattr(torch.nn.modules.module, "_global_forward_hooks", _RENAMED)
_global_forward_pre_hooks = getattr(torch.nn.modules.module, "_global_forward_pre_hooks", _RENAMED)
_global_backward_hooks = getattr(torch.nn.modules.module, "_global_backward_hooks", _RENAMED)
_global_backward_pre_hooks = getattr(torch.nn.modules.module, "_global_backward_pre_hooks", _RENAMED)
_tracing_state: Callable[[], Any] = getattr(torch._C, "_get_tracing_state", lambda: True)

# How the optimizer fires its hooks: `CallbackDispatcher.plans`, whose `plans[hook]((), kwargs)` is
# `call_with(hook, kwargs)` without a Python frame in between.
Plans = Mapping[str, Callable[[tuple[Any, ...], dict[str, Any]], list[Any]]]


class BackwardGuard:
    """Whether ``Fabric.backward`` is running, checked by the outputs of set-up models when gradients reach
    them: where Fabric's backward does more than ``loss.backward()`` (scale the loss, fire hooks), skipping
    it must be an error, not a silently different result."""

    def __init__(self) -> None:
        self.inside = False
        self.precision_name = "32-true"
        # One bound method, made once: registering it on each forward's output costs no allocation.
        self.check = self._check

    def _check(self, grad: torch.Tensor) -> None:
        if not self.inside:
            raise RuntimeError(
                f"loss.backward() was called on the output of a model set up with precision="
                f"{self.precision_name!r}. Call fabric.backward(loss) instead: it scales the loss where a grad "
                "scaler needs it and fires the backward hooks (as Lightning Fabric requires too). Gradients "
                "through the set-up model must all come from fabric.backward."
            )

    def watch(self, output: Any) -> Any:
        """Register the check on every tensor of ``output`` that gradients will flow through."""
        if type(output) is torch.Tensor:  # the usual output, without walking a tree
            if output.requires_grad:
                output.register_hook(self.check)  # type: ignore[no-untyped-call]
            return output
        return map_tensors(output, self._watch_tensor)

    def _watch_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.requires_grad:
            tensor.register_hook(self.check)  # type: ignore[no-untyped-call]
        return tensor


class FabricModule(nn.Module):
    """A set-up module: forward runs under the precision; attributes and state dicts are the original's.

    ``forward_module`` is what runs (possibly DDP/compiled); ``original_module`` is the user's module.
    Reading an attribute the wrapper lacks reads the user's module; setting one the wrapper does not own
    (its own internals, nn.Module's bookkeeping such as ``training``, names defined on this class) sets it
    on the user's module, so ``model.head = nn.Linear(...)`` after setup is seen by forward and saved.
    """

    def __init__(
        self,
        forward_module: nn.Module,
        original_module: nn.Module,
        precision: Precision,
        backward_guard: BackwardGuard | None = None,
    ) -> None:
        super().__init__()
        self._forward_module = forward_module
        # A plain attribute too: reading a registered submodule goes through nn.Module.__getattr__, which
        # costs about a microsecond on every forward.
        object.__setattr__(self, "_run", forward_module)
        # Not a registered submodule: registering it twice would duplicate parameters in .parameters().
        object.__setattr__(self, "_original_module", original_module)
        object.__setattr__(self, "_precision", precision)
        # Set where `loss.backward()` on an output must be refused (Fabric decides; see Fabric.setup_module).
        if backward_guard is not None:
            backward_guard.precision_name = precision.name
        object.__setattr__(self, "_backward_guard", backward_guard)
        plain = type(precision) is Precision and backward_guard is None
        object.__setattr__(self, "_plain_precision", plain)
        # Whether __call__ may run the module itself: only while nothing is to be done around it and no
        # `forward` has been set on this wrapper (__setattr__ clears it then).
        object.__setattr__(self, "_direct_run", plain)
        # Autocast precisions leave inputs alone: skip the call that would return them unchanged.
        object.__setattr__(self, "_converts_input", not inherits(precision, Precision, ("convert_input",)))
        # Methods other than forward must run through forward when something acts there (DDP's gradient
        # hooks, FSDP's unsharding, autocast); otherwise `model.training_step(...)` would silently skip it.
        object.__setattr__(self, "_redirect_methods", forward_module is not original_module or not plain)
        # Names given to mark_forward_method: redirected like the above even when nothing acts in forward.
        object.__setattr__(self, "_forward_methods", set())

    @property
    def module(self) -> nn.Module:
        """The user's module as it was passed to ``setup`` (unwrapped from torch.compile)."""
        module: nn.Module = unwrap_compiled(self._original_module)
        return module

    @property
    def device(self) -> torch.device:
        """The device of the user's module: its own ``device`` attribute if it has one, else where its first
        parameter (or, lacking parameters, its first buffer) lies; CPU for a module without either."""
        module = self.module
        own = getattr(module, "device", None)
        if own is not None:
            return own  # type: ignore[no-any-return]
        for tensor in _tensors(module):
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the user's module: its own ``dtype`` attribute if it has one, else that of its first
        floating-point parameter (or, lacking one, floating-point buffer); ``torch.get_default_dtype()``
        for a module without either."""
        module = self.module
        own = getattr(module, "dtype", None)
        if own is not None:
            return own  # type: ignore[no-any-return]
        for tensor in _tensors(module):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.get_default_dtype()

    def mark_forward_method(self, method: str | Callable[..., Any]) -> None:
        """Run a method of the user's module other than ``forward`` through the set-up model's forward.

        Calling ``model.generate(...)`` then runs inside the wrapper's ``__call__``: under the precision,
        through DDP/FSDP and past hooks registered on the set-up model. treadle already does this for every
        method of the user's module whenever something acts in forward (DDP, FSDP, an autocast precision),
        so there marking changes nothing; it is accepted for code ported from Lightning Fabric and makes
        the redirection explicit for setups where nothing acts yet.

        Args:
            method: the method's name, or the method itself bound to the user's module
                (``model.module.generate``).

        Raises:
            TypeError: ``method`` is neither a name nor a method bound to the user's module.
            ValueError: the module has no such method, or it is ``forward`` or one of nn.Module's own.

        Example::

            model = fabric.setup(model)
            model.mark_forward_method("generate")
            tokens = model.generate(prompt)
        """
        module = self.module
        if isinstance(method, str):
            name = method
        elif inspect.ismethod(method) and method.__self__ is module:
            name = method.__name__
        else:
            raise TypeError(
                f"FabricModule.mark_forward_method(method={method!r}) takes the name of a method of the "
                f"set-up {type(module).__name__}, or that method bound to it (model.module.<name>)."
            )
        if name == "forward" or hasattr(nn.Module, name):
            raise ValueError(
                f"FabricModule.mark_forward_method(method={method!r}): {name!r} is "
                + ("forward itself" if name == "forward" else "nn.Module's own method")
                + ", not one to run through forward. Pass a custom method of your module, e.g. 'generate'."
            )
        attribute = getattr(module, name, None)
        if not (inspect.ismethod(attribute) and attribute.__self__ is module):
            found = (
                f"{type(module).__name__} has no method {name!r}"
                if attribute is None
                else f"{type(module).__name__}.{name} is a {type(attribute).__name__}, not a method"
            )
            raise ValueError(
                f"FabricModule.mark_forward_method(method={method!r}): {found}. "
                "Pass the name of a method defined on your module's class."
            )
        self.__dict__["_forward_methods"].add(name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # nn.Module.__call__ spends about a microsecond per step (two frames and its hook checks) before it
        # reaches forward. The wrapper rarely has hooks of its own, so go straight to forward unless
        # something would act there: hooks on the wrapper or global module hooks, module.compile(), or a
        # torch.jit trace in progress.
        if (
            self._forward_hooks
            or self._forward_pre_hooks
            or self._backward_hooks
            or self._backward_pre_hooks
            or _global_forward_hooks
            or _global_forward_pre_hooks
            or _global_backward_hooks
            or _global_backward_pre_hooks
            or self._compiled_call_impl is not None
            or _tracing_state()
        ):
            return super().__call__(*args, **kwargs)
        if self._direct_run:  # forward's own first line, one frame sooner
            return self._run(*args, **kwargs)
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._plain_precision:  # 32-true: nothing to cast or enter, keep the step free of overhead
            return self._run(*args, **kwargs)
        precision = self._precision
        if self._converts_input:
            args, kwargs = precision.convert_input((args, kwargs))
        with precision.forward_context():
            output = self._run(*args, **kwargs)
        output = precision.convert_output(output)
        guard = self._backward_guard
        if guard is not None and torch.is_grad_enabled():
            return guard.watch(output)
        return output

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, nn.Parameter]]:
        return self.module.named_parameters(*args, **kwargs)

    def named_buffers(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
        return self.module.named_buffers(*args, **kwargs)

    def named_modules(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, nn.Module]]:
        yield from self.module.named_modules(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        # Anything the user's module has (submodules, custom methods and attributes) reads straight through.
        state = self.__dict__
        attribute = getattr(state["_original_module"], name)
        redirect = state["_redirect_methods"] or name in state.get("_forward_methods", ())
        if redirect and self._is_user_method(name, attribute):
            return self._through_forward(attribute)
        return attribute

    def _is_user_method(self, name: str, attribute: Any) -> bool:
        return (
            inspect.ismethod(attribute)
            and attribute.__self__ is self.module
            and name != "forward"
            and not hasattr(nn.Module, name)
        )

    def _through_forward(self, method: Callable[..., Any]) -> Callable[..., Any]:
        module = self.module

        def restore(saved: Any) -> None:
            if saved is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = saved

        @functools.wraps(method)
        def call_through_forward(*args: Any, **kwargs: Any) -> Any:
            saved = module.__dict__.get("forward", _MISSING)

            def as_forward(*inner_args: Any, **inner_kwargs: Any) -> Any:
                restore(saved)  # the method may call self(...) itself: give it the real forward back
                return method(*inner_args, **inner_kwargs)

            module.__dict__["forward"] = as_forward
            try:
                return self(*args, **kwargs)
            finally:
                restore(saved)

        return call_through_forward

    def __setattr__(self, name: str, value: Any) -> None:
        state = self.__dict__
        # Until __init__ has stored the user's module everything is the wrapper's own (nn.Module's fields).
        if "_original_module" in state and not self._owns(name):
            setattr(self.module, name, value)  # what forward reads, and what state_dict() saves
            return
        if name == "forward":  # a forward of the wrapper's own, which __call__ must now go through
            object.__setattr__(self, "_direct_run", False)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if "_original_module" in self.__dict__ and not self._owns(name):
            delattr(self.module, name)  # where __setattr__ put it
            return
        super().__delattr__(name)

    def _owns(self, name: str) -> bool:
        state = self.__dict__
        return (
            name in state
            or name in state["_modules"]
            or name in state["_parameters"]
            or name in state["_buffers"]
            or hasattr(type(self), name)
            or name.startswith("__")  # protocol names (copy, pickle) belong to the object they are set on
        )

    def __repr__(self) -> str:
        return f"FabricModule({self.module!r})"


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


class FabricOptimizer(torch.optim.Optimizer):
    """A set-up optimizer. ``step`` fires the step hooks and goes through the grad scaler, if any.

    ``on_before_optimizer_step`` and ``on_after_optimizer_step`` receive ``optimizer=`` (the wrapped one) and
    ``strategy=`` (Fabric's Strategy), besides Fabric's hook arguments.

    It is an ``Optimizer`` (isinstance holds) without copying one: param groups, state and every other
    attribute are the wrapped optimizer's own.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        strategy: Strategy,
        plans: Plans,
        hook_arguments: dict[str, Any] | None = None,
    ) -> None:
        # Optimizer.__init__ is deliberately not called: all state lives in the wrapped optimizer.
        self.__dict__["_optimizer"] = optimizer
        self.__dict__["_strategy"] = strategy
        self.__dict__["_plans"] = plans
        self.__dict__["_hook_arguments"] = {} if hook_arguments is None else hook_arguments
        # Nothing to scale: `step` calls the optimizer itself instead of going through strategy and precision.
        self.__dict__["_direct_step"] = strategy.passes_through

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer that was set up (as the strategy prepared it)."""
        return self.__dict__["_optimizer"]  # type: ignore[no-any-return]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def step(self, closure: Callable[[], float] | None = None) -> Any:
        state = self.__dict__
        plans = state["_plans"]
        optimizer = state["_optimizer"]
        # One dict for both hooks; `strategy=` as Lightning callbacks declare it.
        hook_kwargs = {"optimizer": optimizer, "strategy": state["_strategy"], **state["_hook_arguments"]}
        plans["on_before_optimizer_step"]((), hook_kwargs)
        if closure is not None:
            output = state["_strategy"].optimizer_step(optimizer, closure=closure)
        elif state["_direct_step"]:
            output = optimizer.step()
        else:
            output = state["_strategy"].optimizer_step(optimizer)
        plans["on_after_optimizer_step"]((), hook_kwargs)
        return output

    # The wrapped optimizer's own zero_grad (with its own defaults), looked up on every access so that a
    # patched one is seen, and patched there when set here. A C-level getter: a method here would add a
    # Python frame to every step.
    zero_grad = property(
        operator.attrgetter("_optimizer.zero_grad"),
        lambda self, value: setattr(self.optimizer, "zero_grad", value),
        lambda self: delattr(self.optimizer, "zero_grad"),
        doc="The wrapped optimizer's ``zero_grad(set_to_none=True)``: clear the gradients of its parameters.",
    )

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    # Optimizer's own pickling keeps only defaults/state/param_groups; the wrapper's state is its __dict__.
    # Rebuilt through a function: the per-optimizer-class subclass (see wrap_optimizer) is made at run
    # time and cannot be found by name when unpickling.
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_optimizer, (dict(self.__dict__),))

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:
        optimizer = self.__dict__.get("_optimizer")
        if optimizer is None or name.startswith("__"):  # copy/pickle probe dunders before __dict__ is filled
            raise AttributeError(name)
        return getattr(optimizer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # LR schedulers patch `step` onto the instance; keep that on the wrapper, send the rest through.
        if name == "step" or name in type(self).__dict__:
            object.__setattr__(self, name, value)
        else:
            setattr(self.optimizer, name, value)

    def __repr__(self) -> str:
        return f"FabricOptimizer({self.optimizer!r})"


def check_module(module: object, method: str) -> None:
    """Raise if ``module``, given to ``Fabric.<method>()``, is already a set-up module or not a module.

    The user's own module may be set up again (``setup(model)``, then ``setup(model, optimizer)``), as in
    Lightning Fabric: each call wraps it anew. Wrapping the wrapper would stack two precision layers.
    """
    if isinstance(module, FabricModule):
        raise ValueError(
            f"Fabric.{method}() got a module that is already set up (what an earlier setup returned). Set up "
            "each module once and keep using what setup returned; to add optimizers, pass the original module "
            "again with them, e.g. fabric.setup(model.module, optimizer)."
        )
    if not isinstance(module, nn.Module):
        raise TypeError(f"Fabric.{method}() takes a torch.nn.Module, not {type(module).__name__}.")


def wrap_optimizer(
    optimizer: torch.optim.Optimizer, strategy: Strategy, plans: Plans, hook_arguments: dict[str, Any]
) -> FabricOptimizer:
    """A FabricOptimizer around ``optimizer`` that is also an instance of ``optimizer``'s own class, so
    ``isinstance(opt, torch.optim.AdamW)`` holds for the set-up optimizer as it does in Lightning Fabric."""
    return _wrapper_class(type(optimizer))(optimizer, strategy, plans, hook_arguments)


# One wrapper class per optimizer class, made on first use.
_WRAPPER_CLASSES: dict[type, type[FabricOptimizer]] = {}


def _wrapper_class(kind: type[torch.optim.Optimizer]) -> type[FabricOptimizer]:
    wrapper = _WRAPPER_CLASSES.get(kind)
    if wrapper is None:
        wrapper = _WRAPPER_CLASSES[kind] = _make_wrapper_class(kind)
    return wrapper


def _make_wrapper_class(kind: type[torch.optim.Optimizer]) -> type[FabricOptimizer]:
    # A subclass of both, made once per optimizer class: FabricOptimizer comes first, so its step, state and
    # param_groups win; the optimizer's class only adds its own name to isinstance. Its methods that
    # FabricOptimizer lacks (SAM's first_step) now run on the wrapper, whose state is the optimizer's.
    if kind is torch.optim.Optimizer or issubclass(kind, FabricOptimizer):
        return FabricOptimizer
    try:
        return type(f"Fabric{kind.__name__}", (FabricOptimizer, kind), {"__module__": __name__})
    except TypeError:  # a class that cannot be a base (conflicting __slots__, a C layout): isinstance only
        return FabricOptimizer


def _rebuild_optimizer(state: dict[str, Any]) -> FabricOptimizer:
    kind = _wrapper_class(type(state["_optimizer"]))
    wrapper = kind.__new__(kind)
    wrapper.__dict__.update(state)
    return wrapper


def unwrap(obj: Any) -> Any:
    """The module or optimizer that was set up, for a set-up one; anything else unchanged."""
    if isinstance(obj, FabricModule):
        return obj.module
    if isinstance(obj, FabricOptimizer):
        return obj.optimizer
    return obj


def is_wrapped(obj: object) -> bool:
    """Whether `obj` was set up by Fabric: a set-up module (also after ``torch.compile``), optimizer or
    dataloader.

    Example::

        model = fabric.setup(model)
        assert is_wrapped(model) and not is_wrapped(model.module)
    """
    from treadle.data import FabricDataLoader  # data.py sits beside this module; imported on use

    return isinstance(_outside_compile(obj), (FabricModule, FabricOptimizer, FabricDataLoader))


def unwrap_objects(collection: Any) -> Any:
    """`collection` with every set-up module, optimizer and dataloader in it replaced by the original.

    Goes through dicts, lists, tuples and dataclasses; anything else is returned unchanged.

    Example::

        model, optimizer = unwrap_objects((fabric_model, fabric_optimizer))
    """
    return map_leaves(collection, _original, is_wrapped)


_unwrap_objects = unwrap_objects  # Lightning's name: `from lightning.fabric.wrappers import _unwrap_objects`


def _original(obj: Any) -> Any:
    from treadle.data import FabricDataLoader

    obj = _outside_compile(obj)
    return obj.dataloader if isinstance(obj, FabricDataLoader) else unwrap(obj)


def _outside_compile(obj: Any) -> Any:
    # torch.compile(fabric_model) holds the set-up module as the submodule `_orig_mod`. Not getattr: a
    # FabricModule forwards unknown attributes to the module it wraps, which may itself be compiled.
    while isinstance(obj, nn.Module) and "_orig_mod" in obj._modules:
        obj = obj._modules["_orig_mod"]
    return obj


def check_unwrapped(obj: object, position: int, wrapper: type, expected: type, method: str) -> None:
    """Raise if ``obj``, argument ``position`` of ``Fabric.<method>()``, is already set up or of the wrong type."""
    if isinstance(obj, wrapper):
        raise ValueError(
            f"Fabric.{method}() got an object at position {position} that is already set up. "
            "Set up each object once and keep using what setup returned."
        )
    if not isinstance(obj, expected):
        raise TypeError(
            f"Fabric.{method}() got {type(obj).__name__} at position {position}; it takes "
            f"{expected.__module__}.{expected.__qualname__} instances."
        )
