"""What a hand-written trainer on Fabric imports from Lightning's utilities, strategies and wrappers (JSON)."""

import json
import warnings

import lightning as L
import torch
from lightning.fabric.utilities import rank_zero_warn
from lightning.fabric.utilities.types import Optimizable
from lightning.fabric.wrappers import _unwrap_objects, is_wrapped
from torch import nn


def parse(output):
    if isinstance(output, Optimizable):
        return "optimizer"
    if isinstance(output, (list, tuple)) and all(isinstance(item, Optimizable) for item in output):
        return "optimizers"
    return "other"


if __name__ == "__main__":
    fabric = L.Fabric(accelerator="cpu", devices=1)
    model = nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    wrapped_model, wrapped_opt = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(list(range(4)), batch_size=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rank_zero_warn("no validation_step: skipping validation")
    print(
        json.dumps(
            {
                "parse": [parse(optimizer), parse([optimizer]), parse(wrapped_opt), parse(model)],
                "fsdp": isinstance(fabric.strategy, L.fabric.strategies.fsdp.FSDPStrategy),
                "wrapped": [
                    is_wrapped(wrapped_model),
                    is_wrapped(wrapped_opt),
                    is_wrapped(loader),
                    is_wrapped(model),
                ],
                "unwrapped": [
                    obj is original
                    for obj, original in zip(
                        _unwrap_objects([wrapped_model, wrapped_opt]), [model, optimizer], strict=True
                    )
                ]
                + [type(_unwrap_objects(loader)) is torch.utils.data.DataLoader],
                "warned": [str(w.message) for w in caught if "validation" in str(w.message)],
                "batches": [batch.tolist() for batch in loader],
            }
        )
    )
