"""Mixed precision through torch.autocast, with a grad scaler for float16."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from treadle.precision.base import Precision, inherits
from treadle.tree import map_tensors


class MixedPrecision(Precision):
    """Parameters stay float32; forward runs under ``torch.autocast``; float16 scales the loss.

    Floating-point inputs of forward are cast to ``dtype`` first, as Lightning Fabric casts them, so a
    forward that mixes its inputs with tensors it makes under autocast sees one dtype; outputs come back
    in float32. ``precision="16-mixed"`` on CPU is this with bfloat16 (CPU autocast is for bfloat16).

    Args:
        dtype: ``torch.float16`` or ``torch.bfloat16``.
        device_type: ``"cuda"``, ``"cpu"`` or ``"mps"``, the device autocast applies to.
        scaler: a GradScaler to use for float16; one is made when None. bfloat16 needs none.
    """

    def __init__(
        self, dtype: torch.dtype, device_type: str, scaler: torch.amp.GradScaler | None = None
    ) -> None:
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"MixedPrecision(dtype={dtype}) is not supported. Use torch.float16 or torch.bfloat16; for "
                "full precision use Precision()."
            )
        self.dtype = dtype
        self.device_type = device_type
        self.name = "16-mixed" if dtype == torch.float16 else "bf16-mixed"  # type: ignore[misc]
        if dtype == torch.float16 and scaler is None:
            scaler = torch.amp.GradScaler(device_type)
        self._scaler = scaler
        # Optimizers already unscaled in this step: clipping unscales early, so step must not unscale twice
        # (GradScaler would raise).
        self._unscaled: set[int] = set()

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def passes_through(self) -> bool:
        # bfloat16 has no grad scaler, and without one `pre_backward` and `optimizer_step` below add nothing.
        return self._scaler is None and inherits(
            self, MixedPrecision, ("pre_backward", "backward", "optimizer_step")
        )

    @property
    def requires_fabric_backward(self) -> bool:
        # Also under bfloat16, where the two would compute the same: a script written for bf16-mixed must
        # not break silently when switched to 16-mixed, whose grad scaler needs fabric.backward.
        return True

    def convert_input(self, data: Any) -> Any:
        return map_tensors(data, self._cast_input)

    def _cast_input(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.dtype) if tensor.is_floating_point() and tensor.dtype != self.dtype else tensor

    def convert_output(self, data: Any) -> Any:
        # Outputs leave autocast in float32 so the loss and anything the user computes from them is accurate.
        if isinstance(data, torch.Tensor):  # the usual output, without walking a tree
            return data.float() if data.dtype in _HALF_DTYPES else data
        return map_tensors(data, _to_float32)

    def pre_backward(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._scaler is not None:
            return self._scaler.scale(tensor)
        return tensor

    def optimizer_step(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        if self._scaler is None:
            return optimizer.step(**kwargs)
        self._unscaled.discard(id(optimizer))
        result = self._scaler.step(optimizer, **kwargs)
        self._scaler.update()
        return result

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        if self._scaler is None or id(optimizer) in self._unscaled:
            return
        self._scaler.unscale_(optimizer)
        self._unscaled.add(id(optimizer))

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self._scaler

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self._scaler.state_dict()} if self._scaler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._scaler is not None and "scaler" in state_dict:
            self._scaler.load_state_dict(state_dict["scaler"])


_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _to_float32(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype in _HALF_DTYPES:
        return tensor.float()
    return tensor
