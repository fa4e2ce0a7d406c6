"""Fit a small classifier with Lightning's examples/fabric/build_your_own_trainer ``MyCustomTrainer``.

The trainer module sits next to this file as ``trainer.py``. Prints one JSON line of results. The model is
a LightningModule when Lightning is installed, else a plain module with the one LightningModule method the
trainer calls (``lr_scheduler_step``).
"""

import json
import sys

import torch

from trainer import MyCustomTrainer

try:
    from lightning import LightningModule as Base
except ImportError:
    Base = torch.nn.Module


class Classifier(Base):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        return {"loss": self.loss_fn(logits, y), "accuracy": (logits.argmax(-1) == y).float().mean()}

    def validation_step(self, batch, batch_idx):
        return self.training_step(batch, batch_idx)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max")
        return optimizer, {
            "scheduler": scheduler,
            "monitor": "val_accuracy",
            "interval": "epoch",
            "frequency": 1,
        }

    def lr_scheduler_step(self, scheduler, metric):
        scheduler.step(metric)


if __name__ == "__main__":
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(320, 1, 8, 8), torch.randint(0, 10, (320,)))
    model = Classifier()
    trainer = MyCustomTrainer(
        accelerator="cpu",
        devices=int(sys.argv[1]),
        limit_train_batches=5,
        limit_val_batches=3,
        max_epochs=3,
        checkpoint_dir="checkpoints",
    )
    trainer.fit(
        model,
        torch.utils.data.DataLoader(data, batch_size=32, shuffle=True),
        torch.utils.data.DataLoader(data, batch_size=32),
    )
    weight_sum = sum(p.detach().sum().item() for p in model.parameters())
    if trainer.fabric.is_global_zero:  # every rank runs this script; one answers
        print(
            json.dumps(
                {
                    "global_step": trainer.global_step,
                    "epoch": trainer.current_epoch,
                    "weight_sum": round(weight_sum, 5),
                    "rank": trainer.fabric.global_rank,
                }
            )
        )
