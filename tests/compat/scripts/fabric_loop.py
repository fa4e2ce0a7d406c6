"""A Lightning Fabric loop that touches much of its API. Prints one JSON line of results.

Written against Lightning Fabric; the tests run it as is and with the imports switched to treadle.
"""

import json
import os
import sys

import lightning as L
import torch
from lightning.fabric.loggers import CSVLogger
from lightning.fabric.utilities import rank_zero_only
from lightning.fabric.utilities.seed import seed_everything
from lightning.fabric.wrappers import _unwrap_objects
from torch import nn


class Recorder:
    def __init__(self):
        self.batches = 0
        self.epochs = []

    def on_train_batch_end(self, loss, batch_idx):
        self.batches += 1

    def on_train_epoch_end(self, epoch, mean_loss):
        self.epochs.append(round(mean_loss, 6))


@rank_zero_only
def announce(message):
    print(message, file=sys.stderr)


def main(root):
    seed_everything(7)
    recorder = Recorder()
    fabric = L.Fabric(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        callbacks=[recorder],
        loggers=CSVLogger(root, name="run"),
    )
    fabric.launch()
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    generator = torch.Generator().manual_seed(3)
    data = torch.utils.data.TensorDataset(
        torch.randn(96, 6, generator=generator), torch.randn(96, 1, generator=generator)
    )
    loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(data, batch_size=16, shuffle=True))
    for epoch in range(3):
        total = 0.0
        for batch_idx, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            fabric.clip_gradients(model, optimizer, max_norm=1.0)
            optimizer.step()
            fabric.call("on_train_batch_end", loss=loss, batch_idx=batch_idx)
            fabric.log("train_loss", loss.item(), step=epoch * len(loader) + batch_idx)
            total += loss.item()
        fabric.call("on_train_epoch_end", epoch=epoch, mean_loss=total / len(loader))
    announce("done")
    counts = fabric.all_gather({"batches": recorder.batches, "mean": 0.5})
    reduced = fabric.all_reduce(torch.tensor(2.0), reduce_op="sum")
    path = os.path.join(root, "state.ckpt")
    fabric.save(path, {"model": model, "optimizer": optimizer, "epoch": 3})
    fresh = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.05, momentum=0.9)
    fresh, fresh_opt = fabric.setup(fresh, fresh_opt)
    remainder = fabric.load(path, {"model": fresh, "optimizer": fresh_opt})
    raw_model, raw_opt = _unwrap_objects([model, optimizer])
    fabric.logger.finalize("success")
    print(
        json.dumps(
            {
                "epoch_means": recorder.epochs,
                "batches": recorder.batches,
                "gathered": {key: value.tolist() for key, value in counts.items()},
                "reduced": reduced.item(),
                "remainder": remainder,
                "loaded_equal": all(
                    torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True)
                ),
                "unwrapped": isinstance(raw_model, nn.Sequential) and isinstance(raw_opt, torch.optim.SGD),
                "is_instance_of_sgd": isinstance(optimizer, torch.optim.SGD),
                "weight_sum": round(sum(p.sum().item() for p in raw_model.parameters()), 5),
                "log_dir_name": os.path.basename(fabric.logger.log_dir),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
