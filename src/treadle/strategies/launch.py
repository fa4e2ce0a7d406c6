"""Starting the processes of a job on this machine, and ending all of them when one fails.

Two ways, as the strategy's ``start_method`` says:

* ``"popen"`` (``strategy="ddp"``): this process becomes local rank 0 and re-runs the same command line for
  ranks 1..N-1, the way torchrun would have started them. Works from any script; each rank runs the whole
  script, and ``fabric.launch()`` returns in every process.
* ``"spawn"`` (``strategy="ddp_spawn"``): ``torch.multiprocessing`` starts N fresh interpreters that each run
  ``fabric.launch(function)``'s function; this process only waits and collects rank 0's result. The function
  and its arguments are pickled, so the function must live in an importable module.
* ``"fork"`` (``strategy="ddp_fork"`` or ``"ddp_notebook"``): as ``"spawn"``, but each rank is a fork of this
  process, so functions defined in a notebook work. CUDA cannot be used in this process before the fork.

Either way a failing rank ends the others within seconds instead of leaving them blocked in a collective
until the process group times out.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from treadle.strategies.environment import ProcessEnvironment, rank_environment

T = TypeVar("T")

# How often the watcher looks at the children, and how long a terminated child gets before SIGKILL.
_POLL_SECONDS = 0.2
_TERMINATE_GRACE_SECONDS = 5.0
# How long a failing job looks for a rank that a signal killed, which is the cause to report.
_KILL_REPORT_SECONDS = 1.0


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def script_command() -> list[str]:
    """The command line that started this interpreter, to run it again for the other ranks.

    ``sys.orig_argv`` keeps interpreter flags and the ``-m module`` / ``-c code`` form, which ``sys.argv``
    loses; the interpreter itself is taken from ``sys.executable`` so a virtualenv's python is reused.
    """
    original = list(getattr(sys, "orig_argv", []))
    if len(original) < 2 or _is_interactive(original):
        raise RuntimeError(
            "Fabric.launch() with strategy='ddp' starts the other ranks by running this script again, but "
            "this Python session has no script (an interactive shell or a notebook). Use "
            "strategy='ddp_notebook' with fabric.launch(train_function), or start the script with torchrun / "
            "`treadle run`."
        )
    return [sys.executable, *original[1:]]


def start_local_ranks(world_size: int, main_address: str = "127.0.0.1") -> ProcessEnvironment:
    """Start ranks 1..``world_size``-1 on this machine by re-running the script; this process is rank 0.

    A watcher thread ends the job if a child fails: it terminates the other children, prints which rank
    failed, and ends this process with exit code 1. When this process ends, it waits for children that are
    finishing normally, and terminates them if it ended with an uncaught exception.

    Args:
        world_size: how many processes the job has, this one included.
        main_address: the address the ranks meet at (this machine).

    Returns:
        The environment of rank 0 (this process), with the port the ranks will meet on.

    Example::

        environment = start_local_ranks(world_size=2)
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{environment.main_port}", rank=0, world_size=2
        )
    """
    command = script_command()
    port = find_free_port(main_address)
    group = _LocalRanks()
    for rank in range(1, world_size):
        env = rank_environment(
            os.environ,
            global_rank=rank,
            local_rank=rank,
            world_size=world_size,
            local_world_size=world_size,
            main_address=main_address,
            main_port=port,
            launcher="subprocess",
        )
        group.start(rank, command, env)
    group.watch()
    atexit.register(group.finish)
    return _local_job(world_size, main_address, port, launcher="subprocess")


def spawn_ranks(
    function: Callable[..., T],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    world_size: int,
    prepare_rank: Callable[[ProcessEnvironment], None],
    main_address: str = "127.0.0.1",
    start_method: str = "spawn",
) -> T:
    """Run ``function(*args, **kwargs)`` in ``world_size`` new processes; return rank 0's result.

    Each process first calls ``prepare_rank`` with its environment (that is how the strategy, which arrives
    in the child as a copy, learns its rank). Under ``"spawn"``, ``function``, its arguments and
    ``prepare_rank`` are pickled together, so objects they share stay shared in the child; under ``"fork"``
    the child inherits them. Rank 0's result comes back pickled.

    Raises:
        RuntimeError: ``"fork"`` where this platform cannot fork, or after CUDA was initialized here.
        torch.multiprocessing.ProcessRaisedException: a rank raised; carries that rank's traceback. The
            other ranks are terminated.
        torch.multiprocessing.ProcessExitedException: a rank died without raising (killed, or os._exit).
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException, ProcessExitedException, start_processes

    if start_method == "fork":
        _check_can_fork()
    port = find_free_port(main_address)
    template = _local_job(world_size, main_address, port, launcher=start_method)
    context = mp.get_context(start_method)
    results = context.SimpleQueue()
    processes = start_processes(  # type: ignore[no-untyped-call]
        _spawned_rank,
        args=(template, prepare_rank, function, tuple(args), kwargs, results),
        nprocs=world_size,
        join=False,
        start_method=start_method,
    )
    received: list[Any] = []
    try:
        # Read the result while waiting: a result larger than the pipe's buffer blocks rank 0 in `put`
        # until someone reads it, and rank 0 could then never exit.
        while True:
            if not received and not results.empty():
                received.append(results.get())
            if processes.join(timeout=_POLL_SECONDS):
                break
    except ProcessException as error:
        killed = _killed_rank(processes.processes)
        for process in processes.processes:
            if process.is_alive():
                process.terminate()
        if killed is None:
            raise
        # A rank killed outright (SIGKILL, the OOM killer) makes the others fail in their next collective
        # ("Connection reset by peer"), and torch reports whichever it saw first. The kill is the cause.
        rank, pid, number = killed
        hint = (
            " SIGKILL usually means the machine ran out of memory (see `dmesg`) or a scheduler ended the job."
            if number == signal.SIGKILL
            else ""
        )
        raise ProcessExitedException(
            f"treadle: rank {rank} (pid {pid}) was killed by {_signal_name(number)}; the other ranks were "
            f"stopped.{hint}",
            error_index=rank,
            error_pid=pid,
            exit_code=-number,
            signal_name=_signal_name(number),
        ) from error
    except BaseException:
        # A KeyboardInterrupt or an error here must not leave the ranks running on their own.
        for process in processes.processes:
            if process.is_alive():
                process.terminate()
        raise
    if not received and not results.empty():
        received.append(results.get())
    if not received:
        raise RuntimeError(
            "Rank 0 finished without returning a result; this is a bug in treadle, please report it."
        )
    return received[0]  # type: ignore[no-any-return]


def _killed_rank(processes: Sequence[Any]) -> tuple[int, int, int] | None:
    """(rank, pid, signal) of the first rank that a signal ended, waiting briefly for the dying to be reaped."""
    deadline = time.monotonic() + _KILL_REPORT_SECONDS
    while True:
        for rank, process in enumerate(processes):
            # SIGTERM is how torch's join stops the other ranks once one failed: a consequence, not a cause.
            if process.exitcode is not None and process.exitcode < 0 and -process.exitcode != signal.SIGTERM:
                return rank, process.pid, -process.exitcode
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _local_job(world_size: int, main_address: str, main_port: int, *, launcher: str) -> ProcessEnvironment:
    """Rank 0's environment in a job whose ``world_size`` ranks all run on this machine."""
    return ProcessEnvironment(
        world_size=world_size,
        local_world_size=world_size,
        main_address=main_address,
        main_port=main_port,
        launched=True,
        launcher=launcher,
    )


def _spawned_rank(
    rank: int,
    template: ProcessEnvironment,
    prepare_rank: Callable[[ProcessEnvironment], None],
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    results: Any,
) -> None:
    prepare_rank(dataclasses.replace(template, global_rank=rank, local_rank=rank))
    _own_copies((args, kwargs))
    result = function(*args, **kwargs)
    if rank == 0:
        results.put(result)


def _check_can_fork() -> None:
    import torch
    import torch.multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        raise RuntimeError(
            f"strategy='ddp_fork' forks this process, which {sys.platform} cannot do. Use strategy='ddp_spawn' "
            "with a function defined in a module, or strategy='ddp'."
        )
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        raise RuntimeError(
            "strategy='ddp_fork' (or 'ddp_notebook') cannot fork this process: CUDA was already initialized "
            "in it, and a forked child cannot use CUDA then. Restart the kernel and call fabric.launch() "
            "before anything touches the GPU (e.g. .cuda(), torch.cuda.*), or use strategy='ddp_spawn'."
        )


def _own_copies(data: Any) -> None:
    """Give this rank its own storage for the modules' parameters and buffers and the optimizers' state.

    ``mp.spawn`` moves every CPU tensor of ``args`` into shared memory, so without this all ranks would step
    the same weights: with 2 ranks each update would be applied twice. Replacing ``.data`` keeps the
    Parameter objects, so an optimizer passed alongside its model still holds the right ones.
    """
    import torch
    from torch import nn

    def own(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.clone() if tensor.is_shared() else tensor  # type: ignore[no-untyped-call]

    seen: set[int] = set()

    def visit(value: Any) -> None:
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, nn.Module):
            with torch.no_grad():
                for tensor in (*value.parameters(), *value.buffers()):
                    tensor.data = own(tensor.data)
        elif isinstance(value, torch.optim.Optimizer):
            for state in value.state.values():
                for key, tensor in state.items():
                    if isinstance(tensor, torch.Tensor):
                        state[key] = own(tensor)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple, set)):
            for item in value:
                visit(item)

    visit(data)


class _LocalRanks:
    """The child processes of one ``start_local_ranks`` call, and the thread that watches them."""

    def __init__(self) -> None:
        self.children: list[tuple[int, subprocess.Popen[bytes]]] = []
        self._ending = threading.Lock()
        self._ended = False

    def start(self, rank: int, command: list[str], env: dict[str, str]) -> None:
        process = subprocess.Popen(
            command, env=env, preexec_fn=_die_with_parent if _PRCTL is not None else None
        )
        self.children.append((rank, process))

    def watch(self) -> None:
        threading.Thread(target=self._watch, name="treadle-rank-watcher", daemon=True).start()

    def _watch(self) -> None:
        while True:
            running = False
            for rank, process in self.children:
                code = process.poll()
                if code is None:
                    running = True
                elif code != 0:
                    self._fail(rank, process, code)
                    return
            if not running:
                return
            time.sleep(_POLL_SECONDS)

    def _fail(self, rank: int, process: subprocess.Popen[bytes], code: int) -> None:
        with self._ending:
            if self._ended:
                return
            self._ended = True
        others = [p for _, p in self.children if p is not process]
        _terminate(others)
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        _flush_streams()
        print(
            f"treadle: rank {rank} (pid {process.pid}) {how}; its error, if any, is printed above. "
            f"Stopped the other {len(others) + 1} process(es) of the job, this one (rank 0) included.",
            file=sys.stderr,
            flush=True,
        )
        # Rank 0 may be blocked inside a collective that can only end by timeout; leaving now is the one
        # way to end the job promptly. Buffers were flushed above.
        os._exit(1)

    def finish(self) -> None:
        """At exit of rank 0: wait for children that finish normally; end them if rank 0 crashed."""
        crashed = getattr(sys, "last_value", None) is not None or getattr(sys, "last_exc", None) is not None
        if crashed:
            # Rank 0's error may only be the echo of a rank killed outright while rank 0 waited in a
            # collective ("Connection reset by peer"); then the kill is what to report.
            killed = self._killed_child()
            if killed is not None:
                self._fail(*killed)
            with self._ending:
                if self._ended:
                    return
                self._ended = True
            _terminate([process for _, process in self.children])
            return
        for rank, process in self.children:
            code = process.wait()
            if code != 0:
                self._fail(rank, process, code)
                return


    def _killed_child(self) -> tuple[int, subprocess.Popen[bytes], int] | None:
        deadline = time.monotonic() + _KILL_REPORT_SECONDS
        while True:
            for rank, process in self.children:
                code = process.poll()
                if code is not None and code < 0:
                    return rank, process, code
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
    deadline = time.monotonic() + _TERMINATE_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _is_interactive(original_argv: list[str]) -> bool:
    # A plain `python` shell, IPython and Jupyter kernels have no script to run again; `python -c` has one.
    main = sys.modules.get("__main__")
    return main is not None and not hasattr(main, "__file__") and "-c" not in original_argv


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if rank 0 is killed outright (SIGKILL, OOM killer) its
    # atexit never runs, and without this the other ranks would be left running with no one to talk to.
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
