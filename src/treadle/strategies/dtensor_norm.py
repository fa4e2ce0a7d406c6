"""Gradient norm clipping over gradients that are DTensors on different meshes (tensor + data parallel).

``torch.nn.utils.clip_grad_norm_`` stacks the per-parameter norms, which fails when the gradients live on
different meshes (a tensor-parallel weight on the 2D mesh, a norm layer sharded only over data parallel)
and, even on one mesh, returns a DTensor. Here the gradients are grouped by mesh and placement, each group's
norm is reduced to a plain tensor (one collective per group, not per parameter), and the groups combined.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def total_norm(gradients: Iterable[torch.Tensor], norm_type: float) -> torch.Tensor:
    """The ``norm_type``-norm of all ``gradients`` together, as a plain tensor equal on every rank."""
    from torch.distributed.tensor import DTensor

    groups: dict[object, list[torch.Tensor]] = {}
    for gradient in gradients:
        key: object = (gradient.device_mesh, gradient.placements) if isinstance(gradient, DTensor) else None
        groups.setdefault(key, []).append(gradient)
    norms: list[torch.Tensor] = []
    for members in groups.values():
        norm = torch.nn.utils.get_total_norm(members, norm_type=norm_type)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        norms.append(norm.float())
    if not norms:
        return torch.tensor(0.0)
    device = norms[0].device
    stacked = torch.stack([norm.to(device) for norm in norms])
    if math.isinf(norm_type):
        return stacked.max()

    result: torch.Tensor = torch.linalg.vector_norm(stacked, norm_type)
    return result


def clip_by_norm(
    parameters: list[torch.Tensor], max_norm: float, norm_type: float, error_if_nonfinite: bool
) -> torch.Tensor:
    """Scale the gradients of ``parameters`` so that their total norm is at most ``max_norm``; returns the
    norm before clipping (a plain tensor)."""
    from torch.distributed.tensor import DTensor

    gradients = [p.grad for p in parameters if p.grad is not None]
    norm = total_norm(gradients, float(norm_type))
    if error_if_nonfinite and not bool(torch.isfinite(norm)):
        raise RuntimeError(
            f"The total norm of order {norm_type} of the gradients is {norm.item()}, so they cannot be "
            "clipped. Pass error_if_nonfinite=False to Fabric.clip_gradients to clip anyway (the gradients "
            "become nan), or find where the loss or gradients stop being finite."
        )
    coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    # Scaling is linear, so multiplying each rank's local piece scales the whole DTensor, whatever its
    # placement (sharded, replicated or partial), with no communication.
    locals_ = [g.to_local() if isinstance(g, DTensor) else g for g in gradients]
    with torch.no_grad():
        for local in locals_:
            local.mul_(coefficient.to(local.device, local.dtype))
    return norm
