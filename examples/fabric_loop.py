"""A training loop of your own, with Fabric and two callbacks.

The loop is plain PyTorch; Fabric handles device, precision and processes, and ``fabric.call`` lets
callbacks run code at chosen points without touching the loop. The first callback prints how long each
iteration took (a callback small enough to write yourself; the built-in ``IterationTimer`` does it without
waiting for the GPU); the second keeps the weights with the best validation loss.

Run:  python examples/fabric_loop.py --epochs 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from treadle import Fabric


class PrintIterationTime:
    """Prints how long each training iteration took."""

    def on_train_batch_start(self, iteration: int) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, loss: torch.Tensor, iteration: int) -> None:
        # On a GPU the work is queued asynchronously: loss.item() waits for it, so the time is complete.
        # (treadle.callbacks.timer.IterationTimer measures with CUDA events instead, without that wait.)
        value = loss.item()
        print(
            f"iteration {iteration:3d}: {1000 * (time.perf_counter() - self._started):6.2f} ms  loss {value:.4f}"
        )


class KeepBest:
    """Saves the model whenever the validation loss improves, so the best weights survive overfitting."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.best = float("inf")

    def on_validation_end(self, fabric: Fabric, model: nn.Module, val_loss: float, epoch: int) -> None:
        if val_loss < self.best:
            self.best = val_loss
            fabric.save(self.path, {"model": model, "epoch": epoch, "val_loss": val_loss})
            fabric.print(f"epoch {epoch}: val_loss {val_loss:.4f} is the best so far, saved to {self.path}")


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator) * 6 - 3
    return TensorDataset(x, torch.sin(x) + 0.1 * torch.randn(n, 1, generator=generator))


def main(epochs: int, batch_size: int, output: Path) -> float:
    fabric = Fabric(accelerator="cpu", callbacks=[PrintIterationTime(), KeepBest(output)])
    fabric.launch()
    fabric.seed_everything(0)
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model, optimizer = fabric.setup(model, optimizer)
    train_loader, val_loader = fabric.setup_dataloaders(
        DataLoader(make_data(256, seed=0), batch_size=batch_size, shuffle=True),
        DataLoader(make_data(128, seed=1), batch_size=128),
    )
    iteration = 0
    for epoch in range(epochs):
        model.train()
        for batch in train_loader:
            x, y = batch
            fabric.call("on_train_batch_start", iteration=iteration)
            output = model(x)
            loss = nn.functional.mse_loss(output, y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            fabric.call("on_train_batch_end", loss=loss, output=output, iteration=iteration)
            iteration += 1
        model.eval()
        with torch.no_grad():
            losses = [nn.functional.mse_loss(model(x), y) for x, y in val_loader]
        val_loss = float(fabric.all_reduce(torch.stack(losses).mean()))
        fabric.call("on_validation_end", fabric=fabric, model=model, val_loss=val_loss, epoch=epoch)
    return val_loss


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=Path("best_model.ckpt"))
    args = parser.parse_args()
    final = main(args.epochs, args.batch_size, args.output)
    print(f"final val_loss {final:.4f}")
