"""What every multi-process strategy shares: starting the ranks, the process group, and the collectives.

DDP and FSDP differ only in how they wrap the model, synchronise gradients and write checkpoints; they
subclass :class:`ParallelStrategy` and override those parts.
"""

from __future__ import annotations

import atexit
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar, Literal, TypeVar, get_args

import torch
import torch.distributed as dist

from treadle.seed import requested_seed
from treadle.strategies.base import ReduceOp, Strategy
from treadle.strategies.environment import ProcessEnvironment
from treadle.strategies.launch import find_free_port, spawn_ranks, start_local_ranks

T = TypeVar("T")
StartMethod = Literal["popen", "spawn", "fork"]

# torch's own default is 30 minutes for gloo: far too long to notice a dead rank. Ten minutes still lets
# rank 0 write a large checkpoint while the others wait at the barrier; pass `timeout=` to change it.
DEFAULT_TIMEOUT = timedelta(minutes=10)

_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


class ParallelStrategy(Strategy):
    """One process per device, joined in a ``torch.distributed`` process group.

    Args:
        timeout: how long a collective waits for the other ranks before it fails.
        hang_timeout: when a rank has waited this long for the others and no rank is making progress, the
            job is ended with the stuck rank named and every rank's Python stack printed (see
            ``treadle.strategies.watchdog``). A ``timedelta`` or seconds; ``"auto"`` (the default) is 90% of
            `timeout`, so the job ends with a diagnosis instead of the bare timeout; None turns it off.
        process_group_backend: ``"gloo"``, ``"nccl"``, ...; None picks nccl on CUDA and gloo elsewhere.
        start_method: how ``fabric.launch()`` starts the ranks when no launcher did: ``"popen"`` re-runs the
            script, ``"spawn"`` starts fresh interpreters that run ``fabric.launch(function)``'s function,
            ``"fork"`` forks this process for each rank (works in notebooks; not after CUDA is initialized).

    Raises:
        TypeError, ValueError: an option has the wrong type or value; the message names it.
    """

    name: ClassVar[str] = "parallel"

    def __init__(
        self,
        *,
        timeout: timedelta = DEFAULT_TIMEOUT,
        process_group_backend: str | None = None,
        start_method: StartMethod = "popen",
        hang_timeout: timedelta | float | Literal["auto"] | None = "auto",
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        if not isinstance(timeout, timedelta) or timeout.total_seconds() <= 0:
            raise ValueError(
                f"{cls}(timeout={timeout!r}) must be a positive datetime.timedelta, e.g. timedelta(minutes=5)."
            )
        self.hang_timeout = _hang_seconds(cls, hang_timeout, timeout)
        if process_group_backend is not None and (
            not isinstance(process_group_backend, str) or not process_group_backend
        ):
            raise ValueError(
                f"{cls}(process_group_backend={process_group_backend!r}) must be a backend name such as "
                "'gloo' or 'nccl', or None to choose by device."
            )
        if start_method not in get_args(StartMethod):
            raise ValueError(
                f"{cls}(start_method={start_method!r}) is not a start method. Choose 'popen' (re-run the "
                "script for each rank), 'spawn' (start processes that run fabric.launch(function)) or 'fork' "
                "(fork this process for each rank, as in a notebook)."
            )
        self.timeout = timeout
        self.process_group_backend = process_group_backend
        self.start_method: StartMethod = start_method
        self._owns_process_group = False
        self._watchdog: Any = None

    # --- where this process is ---------------------------------------------------------------------------
    @property
    def global_rank(self) -> int:
        return self.environment.global_rank

    @property
    def local_rank(self) -> int:
        return self.environment.local_rank

    @property
    def node_rank(self) -> int:
        return self.environment.node_rank

    @property
    def world_size(self) -> int:
        if self.environment.launched:
            return self.environment.world_size
        return len(self.device_indices) * self.num_nodes

    @property
    def launched(self) -> bool:
        return self.environment.launched or self.world_size == 1

    @property
    def backend(self) -> str:
        """The process group backend this strategy uses (or will use)."""
        if self.process_group_backend is not None:
            return self.process_group_backend
        return "nccl" if self.root_device.type == "cuda" else "gloo"

    def check_environment(self) -> None:
        env = self.environment
        if not env.launched:
            return
        per_node = len(self.device_indices)
        if per_node != env.local_world_size:
            raise ValueError(
                f"Fabric(devices=...) asks for {per_node} process(es) per machine, but the launcher started "
                f"{env.local_world_size} on this one (LOCAL_WORLD_SIZE={env.local_world_size}). Pass "
                f"devices={env.local_world_size} or devices='auto', or start {per_node} per machine "
                f"(torchrun --nproc-per-node {per_node}, treadle run --devices {per_node})."
            )
        if self.num_nodes * env.local_world_size != env.world_size:
            nodes = env.world_size / env.local_world_size
            shown = int(nodes) if nodes.is_integer() else round(nodes, 2)
            raise ValueError(
                f"Fabric(num_nodes={self.num_nodes}) does not match the launcher: WORLD_SIZE={env.world_size} "
                f"with LOCAL_WORLD_SIZE={env.local_world_size} means {shown} machine(s). Pass "
                f"num_nodes={shown} (treadle run --num-nodes {shown}), or start the job on {self.num_nodes} "
                "machine(s)."
            )

    # --- life cycle ------------------------------------------------------------------------------------
    def launch(self, function: Callable[..., T] | None = None, *args: Any, **kwargs: Any) -> T | None:
        if self.launched:
            return None if function is None else function(*args, **kwargs)
        if self.num_nodes > 1:
            raise RuntimeError(
                f"Fabric(num_nodes={self.num_nodes}) cannot start processes on other machines. Start the script "
                "on every machine with torchrun or `treadle run --num-nodes N --node-rank R --main-address "
                "HOST`; fabric.launch() then has nothing to start."
            )
        if self.start_method in ("spawn", "fork"):
            if function is None:
                raise RuntimeError(
                    f"Fabric(strategy={self!r}) starts new processes that run a function, so it needs one: "
                    "fabric.launch(train, *args) calls train(fabric, *args) on every rank. To run the script "
                    "itself on every rank, use strategy='ddp'."
                )
            return spawn_ranks(
                function,
                args,
                kwargs,
                world_size=self.world_size,
                prepare_rank=self._enter_rank,
                start_method=self.start_method,
            )
        self.environment = start_local_ranks(self.world_size)
        return None if function is None else function(*args, **kwargs)

    def _enter_rank(self, environment: ProcessEnvironment) -> None:
        self.environment = environment

    def setup_environment(self) -> None:
        super().setup_environment()
        if dist.is_initialized():
            # The user (or a test harness) created the default group already; reuse it if it fits.
            if dist.get_world_size() != self.world_size or dist.get_rank() != self.global_rank:
                raise RuntimeError(
                    f"A torch.distributed process group already exists with rank {dist.get_rank()} of "
                    f"{dist.get_world_size()}, but this Fabric is rank {self.global_rank} of {self.world_size}. "
                    "Destroy it first (torch.distributed.destroy_process_group()) or match the settings."
                )
            return
        if not self.launched:
            raise RuntimeError(
                "The processes of this job were not started. Call fabric.launch() first (or start the script "
                "with torchrun / `treadle run`)."
            )
        port = self.environment.main_port
        if port is None:
            if self.world_size > 1:
                raise RuntimeError(
                    f"The launcher started {self.world_size} processes but set no MASTER_PORT, so the ranks "
                    "cannot meet. Set MASTER_PORT (and MASTER_ADDR) for every process."
                )
            port = find_free_port(self.environment.main_address)
        if self.backend in ("gloo", "nccl") and not dist.is_backend_available(self.backend):
            raise RuntimeError(
                f"The process group backend {self.backend!r} is not available in this build of torch "
                f"{torch.__version__}. Pass process_group_backend='gloo' to the strategy."
            )
        dist.init_process_group(
            self.backend,
            init_method=f"tcp://{_url_host(self.environment.main_address)}:{port}",
            rank=self.global_rank,
            world_size=self.world_size,
            timeout=self.timeout,
        )
        self._owns_process_group = True
        self._start_watchdog()
        atexit.unregister(_let_collectives_settle)  # once per process, however many groups it joins
        atexit.register(_let_collectives_settle)

    def _start_watchdog(self) -> None:
        if self.hang_timeout is None or self.world_size < 2:
            return
        from torch.distributed import distributed_c10d

        from treadle.strategies.watchdog import HangWatchdog

        get_store = getattr(distributed_c10d, "_get_default_store", None)  # private, but stable since 1.x
        if get_store is None:
            return  # a torch without it: the process-group timeout still ends a hung job, unnamed
        self._watchdog = HangWatchdog(get_store(), self.global_rank, self.world_size, self.hang_timeout)
        self._watchdog.start()

    def teardown(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_process_group = False
        super().teardown()

    def _require_group(self, what: str) -> None:
        self._join_group(f"Fabric.{what}() needs")

    def _join_group(self, who_needs: str) -> None:
        if dist.is_initialized():
            return
        if self.launched:
            self.setup_environment()
            return
        raise RuntimeError(
            f"{who_needs} the processes of the job, which were not started yet. Call fabric.launch() "
            "first (or start the script with torchrun / `treadle run`)."
        )

    # --- checkpoints ----------------------------------------------------------------------------------
    def run_on_rank_zero(self, action: Callable[[], object], what: str) -> None:
        """Run ``action`` on global rank 0 only; every rank waits for it, and every rank raises if it failed.

        Without the shared verdict, a failure on rank 0 would leave the others waiting at the next
        collective until the process group times out. Rank 0 raises its own error; the others raise a
        RuntimeError that names ``what``.
        """
        # Before rank 0 acts: without the other ranks there would be no one to share the verdict with.
        self._join_group(f"To {what}, treadle needs")
        error: Exception | None = None
        if self.is_global_zero:
            try:
                action()
            except Exception as raised:
                error = raised
        failed = self.all_reduce_bool(error is not None, "any")
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(
                f"Rank 0 failed to {what}; its error is reported by rank 0. Nothing was replaced."
            )

    # --- data ------------------------------------------------------------------------------------------
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        # The shuffle seed is rank 0's latest seed_everything seed, sent to every rank: ranks seeded apart
        # (seed_everything(42 + rank), a common pattern) would otherwise shuffle apart, and their shares of
        # the data would overlap.
        seed = self.broadcast(requested_seed(), src=0)
        return {
            "num_replicas": self.world_size,
            "rank": self.global_rank,
            "seed": 0 if seed is None else seed,
        }

    # --- collectives -----------------------------------------------------------------------------------
    def barrier(self, name: str | None = None) -> None:
        self._require_group("barrier")
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.root_device.index or 0])
        else:
            dist.barrier()

    def broadcast(self, obj: T, src: int = 0) -> T:
        self._check_src(src)
        self._require_group("broadcast")
        objects = [obj]
        dist.broadcast_object_list(objects, src=src)
        return objects[0]

    def all_gather(self, tensor: torch.Tensor, sync_grads: bool = False, group: Any = None) -> torch.Tensor:
        self._require_group("all_gather")
        size = dist.get_world_size(group)
        # Collectives need a dense, contiguous tensor on this rank's device; bool is not reducible by gloo.
        original_dtype = tensor.dtype
        send = tensor.to(self.root_device).contiguous()
        if original_dtype == torch.bool:
            send = send.to(torch.uint8)
        if sync_grads:
            gathered: torch.Tensor = _AllGatherWithGrad.apply(  # type: ignore[no-untyped-call]
                send, group, size, dist.get_rank(group)
            )
        else:
            parts = [torch.empty_like(send) for _ in range(size)]
            dist.all_gather(parts, send, group=group)
            gathered = torch.stack(parts)
        return gathered.to(torch.bool) if original_dtype == torch.bool else gathered

    def all_reduce(
        self, tensor: torch.Tensor, reduce_op: ReduceOp = "mean", group: Any = None
    ) -> torch.Tensor:
        self._require_group("all_reduce")
        # A new tensor: reducing in place would silently change the caller's value (often a logged metric).
        result = tensor.detach().to(self.root_device).clone()
        if reduce_op == "mean":
            if not result.is_floating_point() and not result.is_complex():
                result = result.to(torch.get_default_dtype())
            dist.all_reduce(result, op=dist.ReduceOp.SUM, group=group)
            return result.div_(dist.get_world_size(group))
        if result.dtype == torch.bool:
            result = result.to(torch.int32)
        dist.all_reduce(result, op=_REDUCE_OPS[reduce_op], group=group)
        return result

    def all_reduce_bool(self, flag: bool, mode: Literal["any", "all"] = "any") -> bool:
        self._require_group("all_reduce_bool")
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.root_device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX if mode == "any" else dist.ReduceOp.MIN)
        return bool(value.item())

    def _check_src(self, src: int) -> None:
        if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < self.world_size:
            raise ValueError(
                f"Fabric.broadcast(src={src!r}) must be a rank between 0 and {self.world_size - 1} "
                f"(the job has {self.world_size} processes)."
            )

    def _options_repr(self) -> str:
        parts = [f"start_method={self.start_method!r}"] if self.start_method != "popen" else []
        if self.timeout != DEFAULT_TIMEOUT:
            parts.append(f"timeout={self.timeout!r}")
        if self.process_group_backend is not None:
            parts.append(f"process_group_backend={self.process_group_backend!r}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._options_repr()})"


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sends each rank the gradient that every rank's loss has for its slice."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any, size: int, rank: int) -> torch.Tensor:
        ctx.group, ctx.rank = group, rank
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor, group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        # Summing the full gradient across ranks is a reduce-scatter done the simple way, which every
        # backend supports (gloo has no reduce-scatter).
        total = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total[ctx.rank], None, None, None


def _let_collectives_settle() -> None:
    # gloo's worker threads free a finished collective's tensors after `wait()` has returned, and need the
    # GIL for that. If the interpreter starts shutting down first, such a thread is torn down inside a C++
    # destructor and the whole process aborts (SIGABRT) although the script succeeded, about one exit in
    # ten with DDP on torch 2.13. Sleeping releases the GIL so they can finish.
    time.sleep(0.05)


def _hang_seconds(cls: str, value: Any, timeout: timedelta) -> float | None:
    if value is None:
        return None
    if value == "auto":
        return 0.9 * timeout.total_seconds()
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(
            f"{cls}(hang_timeout={value!r}) must be a positive timedelta or number of seconds, 'auto' (90% of "
            "timeout) or None (no watchdog). Example: hang_timeout=timedelta(minutes=5)."
        )
    return float(seconds)


def _url_host(address: str) -> str:
    # An IPv6 literal must be bracketed inside a URL.
    return f"[{address}]" if ":" in address and not address.startswith("[") else address
