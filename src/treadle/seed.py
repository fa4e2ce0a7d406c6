"""Seeding the random number generators, per-worker seeds for DataLoaders, and saving/restoring RNG state.

``seed_everything`` seeds Python's ``random``, numpy's global generator (when numpy is installed) and torch
on the CPU and every CUDA device. ``capture_rng_state``/``restore_rng_state`` snapshot those generators in
a form that ``torch.load(weights_only=True)`` accepts, so a resumed run draws exactly the numbers the
interrupted one would have drawn.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import os
import random
import secrets
import warnings
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch

from treadle.errors import caller_stacklevel

__all__ = [
    "WorkerSeeder",
    "capture_rng_state",
    "make_deterministic",
    "make_worker_init_fn",
    "requested_seed",
    "requested_worker_seed",
    "restore_rng_state",
    "seed_everything",
    "worker_init_fn",
]

log = logging.getLogger(__name__)

# numpy's legacy seeding takes 32-bit seeds; the same range keeps a seed valid for every library.
_MAX_SEED = 2**32 - 1

# The seed of the latest seed_everything(workers=True) call, None if the latest call had workers=False.
# Process-wide like the generators it describes; read through requested_worker_seed().
_worker_seed: int | None = None
# The seed passed to the latest seed_everything call, None if it drew its own; read through requested_seed().
_seed: int | None = None


def seed_everything(seed: int | None = None, workers: bool = False, deterministic: bool = False) -> int:
    """Seed ``random``, numpy (if installed) and torch (CPU and all CUDA devices) with one seed.

    Environment variables are left alone.

    Args:
        seed: An int in ``[0, 2**32 - 1]``, or None to draw a fresh random seed (returned, and logged at
            INFO level, so the run can be repeated).
        workers: Also give every DataLoader worker its own seed, derived from this seed, the process's
            global rank and the worker id. ``Fabric.setup_dataloaders`` attaches a seeding function for
            this; for your own DataLoaders pass ``worker_init_fn=make_worker_init_fn(seed, rank)``.
        deterministic: Also make the kernels repeatable, which bitwise-exact resume (and comparing runs)
            needs: ``torch.use_deterministic_algorithms(True)`` (an op with no deterministic kernel then
            raises, naming itself) and cuDNN's deterministic mode without autotuning. Warns when CUDA is
            present but ``CUBLAS_WORKSPACE_CONFIG`` is unset, which cuBLAS needs to be repeatable. CPU sums
            also depend on how many threads share them: a resumed run must use the same
            ``torch.get_num_threads()`` (set ``OMP_NUM_THREADS`` or call ``torch.set_num_threads``); the
            Trainer records it in its checkpoints and warns on resume when it differs.

    Returns:
        The seed used.

    Raises:
        TypeError: ``seed`` is not an int, or ``workers`` is not a bool.
        ValueError: ``seed`` is outside ``[0, 2**32 - 1]``.

    Example:
        >>> seed_everything(42)
        42
    """
    global _seed, _worker_seed
    if not isinstance(workers, bool):
        raise TypeError(f"seed_everything(workers={workers!r}) must be True or False.")
    if not isinstance(deterministic, bool):
        raise TypeError(f"seed_everything(deterministic={deterministic!r}) must be True or False.")
    if seed is None:
        _seed = None
        seed = secrets.randbelow(_MAX_SEED + 1)
        log.info("seed_everything: no seed given, using seed=%d", seed)
    else:
        seed = _seed = _checked_seed(seed, "seed_everything(seed=...)")
    random.seed(seed)
    numpy = _numpy()
    if numpy is not None:
        numpy.random.seed(seed)
    # Also seeds every CUDA device; if CUDA is not initialised yet the seeding is queued, not forced.
    torch.manual_seed(seed)
    _worker_seed = seed if workers else None
    if deterministic:
        make_deterministic()
    return seed


def make_deterministic() -> None:
    """Make torch's kernels repeatable: see ``seed_everything(deterministic=True)``.

    Example:
        >>> make_deterministic()  # doctest: +SKIP
    """
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if torch.cuda.is_available() and not os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        warnings.warn(
            "seed_everything(deterministic=True): cuBLAS is repeatable only with CUBLAS_WORKSPACE_CONFIG=:4096:8 "
            "(or :16:8) set before the process starts; treadle does not set environment variables for you. "
            "Start the job as `CUBLAS_WORKSPACE_CONFIG=:4096:8 python train.py`.",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )


def requested_seed() -> int | None:
    """The seed passed to the latest ``seed_everything`` call in this process.

    ``Fabric.setup_dataloaders`` seeds the shuffle of its ``DistributedSampler`` with it, so each seed
    gives its own data order. A seed that ``seed_everything(None)`` drew is not reported: each process
    draws a different one, and samplers seeded differently on each rank would overlap instead of
    partitioning the data.

    Returns:
        That seed, or None if the latest call drew a random seed (or none was made).

    Example:
        >>> _ = seed_everything(7)
        >>> requested_seed()
        7
    """
    return _seed


def requested_worker_seed() -> int | None:
    """The seed of the latest ``seed_everything(..., workers=True)`` call in this process.

    Returns:
        That seed, or None if the latest ``seed_everything`` call had ``workers=False`` (or none was made).

    Example:
        >>> _ = seed_everything(7, workers=True)
        >>> requested_worker_seed()
        7
    """
    return _worker_seed


class WorkerSeeder:
    """Seeds ``random``, numpy and torch inside a DataLoader worker; pass it as ``worker_init_fn``.

    A plain class rather than a closure so that it pickles, which DataLoaders using the ``spawn`` or
    ``forkserver`` start method require. Each worker's seed is derived from the base seed, the global
    rank, the worker id and the seed the DataLoader drew for the current iterator. The DataLoader draws
    that from torch's (seeded) generator anew for each epoch, so augmentations differ between epochs but
    repeat exactly when the run is repeated. Without the rank, every process of a distributed run would
    feed identical augmentations.

    Args:
        base_seed: A non-negative int, usually the seed given to :func:`seed_everything`.
        global_rank: This process's rank across all machines (0 without distribution).

    Raises:
        TypeError, ValueError: ``base_seed`` or ``global_rank`` is not a non-negative int.

    Example:
        >>> seeder = WorkerSeeder(42, global_rank=0)
        >>> loader = torch.utils.data.DataLoader(range(8), num_workers=2, worker_init_fn=seeder)
    """

    def __init__(self, base_seed: int, global_rank: int) -> None:
        self.base_seed = _checked_non_negative(base_seed, "base_seed")
        self.global_rank = _checked_non_negative(global_rank, "global_rank")

    def __call__(self, worker_id: int) -> None:
        _seed_worker(self.base_seed, self.global_rank, worker_id)

    def __repr__(self) -> str:
        return f"WorkerSeeder(base_seed={self.base_seed}, global_rank={self.global_rank})"


def make_worker_init_fn(base_seed: int, global_rank: int) -> WorkerSeeder:
    """A picklable ``worker_init_fn`` giving each (rank, worker) its own reproducible seed.

    Args:
        base_seed: A non-negative int, usually the seed given to :func:`seed_everything`.
        global_rank: This process's rank across all machines (0 without distribution).

    Returns:
        A :class:`WorkerSeeder`, called by the DataLoader with the worker id.

    Raises:
        TypeError, ValueError: ``base_seed`` or ``global_rank`` is not a non-negative int.

    Example:
        >>> init = make_worker_init_fn(42, global_rank=0)
        >>> loader = torch.utils.data.DataLoader(range(8), num_workers=2, worker_init_fn=init)
    """
    return WorkerSeeder(base_seed, global_rank)


def worker_init_fn(worker_id: int) -> None:
    """Seed ``random``, numpy and torch in a DataLoader worker from the seed set by :func:`seed_everything`.

    Uses the seed of the latest ``seed_everything(..., workers=True)`` call (0 if none) and the rank of
    the initialised ``torch.distributed`` process group (0 if none). Both are read inside the worker, so
    this only sees them with the ``fork`` start method; with ``spawn`` or ``forkserver`` use
    :func:`make_worker_init_fn`, which carries them along.

    Args:
        worker_id: The worker's index, as the DataLoader passes it.

    Example:
        >>> loader = torch.utils.data.DataLoader(range(8), num_workers=2, worker_init_fn=worker_init_fn)
    """
    base_seed = _worker_seed if _worker_seed is not None else 0
    rank = 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
    _seed_worker(base_seed, rank, worker_id)


def capture_rng_state() -> dict[str, Any]:
    """Snapshot the state of ``random``, numpy's global generator, torch's CPU generator and CUDA's.

    Every value is a tensor, list, int, float, str or None, so the snapshot can be saved in a checkpoint
    and read back with ``torch.load(weights_only=True)``. CUDA states are captured only once CUDA is
    initialised: querying them earlier would initialise CUDA as a side effect, which costs memory on
    every GPU and breaks forking afterwards, and before initialisation no CUDA numbers have been drawn.

    Returns:
        A dict with keys ``"python"``, ``"torch"``, ``"numpy"`` (if numpy is installed) and ``"cuda"``
        (if CUDA is initialised), to pass to :func:`restore_rng_state`.

    Example:
        >>> state = capture_rng_state()
        >>> first = torch.rand(2)
        >>> restore_rng_state(state)
        >>> torch.equal(first, torch.rand(2))
        True
    """
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "torch": torch.get_rng_state(),
    }
    numpy = _numpy()
    if numpy is not None:
        numpy_state = numpy.random.get_state(legacy=True)
        # A tuple unless someone swapped the global generator for a non-MT19937 one; that case is
        # skipped rather than stored in a form weights_only cannot read.
        if isinstance(numpy_state, tuple):
            name, keys, position, has_gauss, cached_gaussian = numpy_state
            state["numpy"] = {
                "bit_generator": str(name),
                "keys": [int(key) for key in keys],
                "position": int(position),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            }
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]  # unannotated in torch
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put the generators back into the state :func:`capture_rng_state` recorded.

    Missing keys are skipped: a snapshot taken without numpy or before CUDA was initialised restores
    what it has. CUDA states beyond this machine's device count (or all of them, without CUDA) are skipped.

    Args:
        state: A dict returned by :func:`capture_rng_state`, possibly after a save/load round trip.

    Raises:
        TypeError: ``state`` is not a dict.
        ValueError: An entry does not have the shape ``capture_rng_state`` writes.

    Example:
        >>> restore_rng_state(capture_rng_state())
    """
    if not isinstance(state, Mapping):
        raise TypeError(
            f"restore_rng_state(state=...) takes the dict capture_rng_state() returned, got "
            f"{type(state).__name__}."
        )
    try:
        python = state.get("python")
        if python is not None:
            random.setstate(
                (int(python["version"]), tuple(int(n) for n in python["internal"]), python["gauss_next"])
            )
        numpy_state = state.get("numpy")
        numpy = _numpy() if numpy_state is not None else None
        if numpy is not None and numpy_state is not None:
            numpy.random.set_state(
                (
                    numpy_state["bit_generator"],
                    numpy.asarray(numpy_state["keys"], dtype=numpy.uint32),
                    int(numpy_state["position"]),
                    int(numpy_state["has_gauss"]),
                    float(numpy_state["cached_gaussian"]),
                )
            )
        torch_state = state.get("torch")
        if torch_state is not None:
            # A checkpoint loaded with a map_location may have moved the state off the CPU.
            torch.set_rng_state(torch_state.cpu())
        cuda_states = state.get("cuda")
        if cuda_states is not None and torch.cuda.is_available():
            for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state.cpu(), device)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise ValueError(
            f"restore_rng_state(state=...) got a state that capture_rng_state() did not write: "
            f"{type(error).__name__}: {error}"
        ) from error


def _seed_worker(base_seed: int, global_rank: int, worker_id: int) -> None:
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    # The DataLoader's per-iterator seed (already offset by worker id); None outside a worker process.
    loader_seed = info.seed if info is not None else 0
    # A cryptographic hash, not arithmetic: base+rank+worker sums collide (rank 1 worker 0 = rank 0
    # worker 1), and Python's hash() of str is salted per process.
    digest = hashlib.blake2b(
        f"{base_seed}:{global_rank}:{worker_id}:{loader_seed}".encode(), digest_size=20
    ).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little"))
    random.seed(int.from_bytes(digest[8:16], "little"))
    numpy = _numpy()
    if numpy is not None:
        numpy.random.seed(int.from_bytes(digest[16:20], "little"))


def _checked_seed(seed: Any, where: str) -> int:
    value = _as_int(seed, where)
    if not 0 <= value <= _MAX_SEED:
        raise ValueError(f"{where} must be between 0 and {_MAX_SEED}, got {value}. Pass e.g. seed=42.")
    return value


def _checked_non_negative(number: Any, name: str) -> int:
    value = _as_int(number, name)
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}.")
    return value


def _as_int(number: Any, where: str) -> int:
    # bool is an int subclass, but seed=True is almost certainly a mistake.
    if isinstance(number, bool):
        raise TypeError(f"{where} must be an int, got the bool {number!r}.")
    try:
        # Accepts int and int-likes such as numpy.int64, but not floats or strings.
        return operator.index(number)
    except TypeError:
        hint = f" Convert it first: int({number!r})." if isinstance(number, (str, float)) else ""
        raise TypeError(f"{where} must be an int, got {type(number).__name__} {number!r}.{hint}") from None


def _numpy() -> ModuleType | None:
    # numpy is optional: seed and snapshot its generator only when it is installed.
    try:
        import numpy
    except ImportError:
        return None
    return numpy
