"""One SGD step on 2 CPU ranks under strategy='ddp_spawn'; prints the update each rank applied (JSON)."""

import json
import sys

import lightning as L
import torch
from torch import nn


def train(fabric, model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer = fabric.setup(model, optimizer)
    before = model.weight.detach().clone()
    x = torch.full((4, 3), float(fabric.global_rank + 1))
    fabric.backward(model(x).sum())
    optimizer.step()
    update = (before - model.weight.detach()).tolist()
    updates = fabric.all_gather(torch.tensor(update))
    return {"updates": updates.tolist(), "world_size": fabric.world_size}


if __name__ == "__main__":
    torch.manual_seed(0)
    fabric = L.Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    result = fabric.launch(train, nn.Linear(3, 1, bias=False))
    print(json.dumps(result), file=sys.stdout)
