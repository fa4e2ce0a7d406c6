"""``treadle consolidate``: a sharded checkpoint folder (FSDP, model parallel) -> one ordinary file.

The folder's shards are read in this one process, whatever number of ranks wrote them, and written as the
file a one-process ``fabric.save`` would write: full tensors keyed by parameter name, loadable with
``torch.load(path, weights_only=True)`` and by ``fabric.load`` under any strategy.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from treadle import checkpoint
from treadle.strategies.fsdp_checkpoint import META_FILE, is_sharded_folder


def consolidate(folder: str | os.PathLike[str], output: str | os.PathLike[str]) -> str:
    """Gather the sharded checkpoint ``folder`` into the single file ``output`` (written atomically).

    Args:
        folder: what ``fabric.save`` wrote under a sharded strategy (it holds ``meta.pt`` and ``.distcp``
            files).
        output: the file to write; an existing file there is replaced only once the new one is complete.

    Returns:
        ``output`` as an absolute path.

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a sharded treadle checkpoint.
        ValueError: ``output`` is inside ``folder``, or is ``folder`` itself.

    Example::

        consolidate("checkpoints/step-1000", "step-1000.pt")
        state = torch.load("step-1000.pt", weights_only=True)  # {"model": {...}, "optimizer": {...}, ...}
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    source, target = os.path.abspath(folder), os.path.abspath(output)
    if not is_sharded_folder(source):
        what = "does not exist" if not os.path.exists(source) else f"has no {META_FILE}"
        raise FileNotFoundError(
            f"treadle consolidate: the checkpoint folder {os.fspath(folder)!r} {what}, so it is not a sharded "
            "treadle checkpoint. Pass the folder that fabric.save wrote with FSDPStrategy or "
            "ModelParallelStrategy (it holds meta.pt and .distcp files)."
        )
    if target == source or target.startswith(source + os.sep):
        raise ValueError(
            f"treadle consolidate: the output {os.fspath(output)!r} is inside the checkpoint folder; write it "
            "beside the folder instead, e.g. treadle consolidate ckpt ckpt.pt."
        )
    meta = checkpoint.load_checkpoint(os.path.join(source, META_FILE))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    # DCP writes a plain torch.save file; it is read back memory-mapped and written once more, with the
    # entries kept in meta.pt, through treadle's atomic, checksummed write.
    handle, gathered = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".dcp.tmp", dir=parent)
    os.close(handle)
    try:
        dcp_to_torch_save(source, gathered)
        shards: dict[str, Any] = torch.load(gathered, map_location="cpu", weights_only=True, mmap=True)
        checkpoint.atomic_save({**meta.get("state", {}), **shards}, target)
    finally:
        if os.path.exists(gathered):
            os.unlink(gathered)
    return target
