"""A user's training script, checked with ``mypy --strict`` by test_typing.py (it also runs).

Lines ending in ``# error: <code>`` must be reported by mypy with that code; no other line may be.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from treadle import Fabric
from treadle.data import FabricDataLoader


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layer(x)
        return out

    def generate(self, steps: int) -> list[int]:
        return list(range(steps))


def main() -> None:
    fabric = Fabric(accelerator="cpu")
    net = Net()
    model, optimizer = fabric.setup(net, torch.optim.AdamW(net.parameters(), lr=1e-3))
    steps: list[int] = model.generate(3)  # the user's own method, checked against Net
    lr: float = optimizer.param_groups[0]["lr"]
    betas = optimizer.defaults["betas"]
    loss = model(torch.randn(8, 4)).sum()
    fabric.backward(loss)
    optimizer.step()
    alone: Net = fabric.setup_module(Net())
    sgd: torch.optim.SGD = fabric.setup_optimizers(torch.optim.SGD(alone.parameters(), lr=0.1))
    data = TensorDataset(torch.randn(8, 4))
    loader: FabricDataLoader[tuple[torch.Tensor, ...]] = fabric.setup_dataloaders(DataLoader(data, batch_size=4))
    train, val = fabric.setup_dataloaders(DataLoader(data), DataLoader(data))
    batches: int = len(loader) + len(train) + len(val)
    assert steps == [0, 1, 2] and lr == 1e-3 and betas and sgd.defaults["lr"] == 0.1 and batches == 18
    if torch.__version__ == "never":  # checked by mypy, never run
        # nn.Module's __getattr__ types unknown names as Tensor | Module (not Any), so a misuse still shows:
        steps.append(model.not_an_attribute)  # error: arg-type
        model.generate("three")  # error: arg-type
        optimizer.stepp()  # error: attr-defined
        print(loader.dataloder)  # error: attr-defined
        fabric.setup_dataloaders(data)  # error: call-overload


if __name__ == "__main__":
    main()
