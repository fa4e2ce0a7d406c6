"""``treadle demo``: the first job to run. Trains a digit classifier on CPU with the Trainer in well under a
minute, with a progress bar, validation against a target accuracy, CSV logs, a checkpoint, and ``--resume``.

The data is generated here: ten 8x8 digit glyphs, each sample shifted by up to a pixel, with strokes
dropped, stray pixels added, its brightness varied and Gaussian noise on top. A small MLP learns to read
them; the held-out split measures whether it did. Nothing is downloaded.

To extend the demo, add callbacks in ``build_callbacks``: it is the one place where they are listed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from treadle.loggers import CSVLogger
from treadle.loggers.base import next_version
from treadle.seed import seed_everything
from treadle.trainer import Trainer

__all__ = ["TARGET_ACCURACY", "DigitClassifier", "build_callbacks", "make_digits", "run_demo"]

TARGET_ACCURACY = 0.95
MAX_EPOCHS = 12
SEED = 1234

_GLYPHS = """
..####.. ...##... ..####.. ..####.. ....##.. .######. ...###.. .######. ..####.. ..####..
.#....#. ..###... .#....#. .#....#. ...#.#.. .#...... ..#..... ......#. .#....#. .#....#.
.#...##. .#.##... ......#. ......#. ..#..#.. .#...... .#...... .....#.. .#....#. .#....#.
.#..#.#. ...##... .....#.. ...###.. .#...#.. .#####.. .#####.. ....#... ..####.. ..#####.
.#.#..#. ...##... ...##... ......#. .######. ......#. .#....#. ...#.... .#....#. ......#.
.##...#. ...##... ..#..... ......#. .....#.. ......#. .#....#. ...#.... .#....#. ......#.
.#....#. ...##... .#...... .#....#. .....#.. .#....#. .#....#. ...#.... .#....#. .....#..
..####.. .######. .######. ..####.. .....#.. ..####.. ..####.. ...#.... ..####.. ..###...
"""


def glyphs() -> torch.Tensor:
    """The ten clean digits as a ``(10, 8, 8)`` float tensor of 0s and 1s."""
    rows = [line.split() for line in _GLYPHS.strip().splitlines()]
    return torch.tensor(
        [[[float(c == "#") for c in rows[r][digit]] for r in range(8)] for digit in range(10)]
    )


def make_digits(n: int, seed: int) -> TensorDataset:
    """``n`` noisy digit images (flattened to 64 values) and their labels, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = glyphs()[labels]
    # Shift by up to one pixel in each direction (zero fill), so position alone does not give it away.
    padded = nn.functional.pad(images, (1, 1, 1, 1))
    dx, dy = torch.randint(0, 3, (2, n), generator=generator)
    rows = (torch.arange(8) + dy[:, None])[:, :, None]
    cols = (torch.arange(8) + dx[:, None])[:, None, :]
    images = padded[torch.arange(n)[:, None, None], rows, cols]
    dropped = torch.rand(images.shape, generator=generator) < 0.1
    stray = torch.rand(images.shape, generator=generator) < 0.02
    images = torch.where(dropped, 0.0, torch.where(stray, 1.0, images))
    brightness = 0.5 + 0.5 * torch.rand(n, 1, 1, generator=generator)
    images = images * brightness + 0.2 * torch.randn(images.shape, generator=generator)
    return TensorDataset(images.reshape(n, 64), labels)


class DigitClassifier(nn.Module):
    """An MLP for 8x8 digits, trained with AdamW under a warmup + cosine learning-rate schedule.

    Args:
        total_steps: optimizer steps the schedule spans.
        lr: the peak learning rate, reached after the warmup.
    """

    def __init__(self, total_steps: int, lr: float = 3e-3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 128), nn.GELU(), nn.Dropout(0.1), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 10)
        )
        self.total_steps = total_steps
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return nn.functional.cross_entropy(self(images), labels)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = self(images)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"loss": nn.functional.cross_entropy(logits, labels), "acc": accuracy}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-2)
        warmup = max(1, self.total_steps // 20)
        total = self.total_steps

        def schedule(step: int) -> float:
            # Linear warmup, then a cosine from the peak down to 5% of it.
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def build_callbacks(root: Path, progress_bar: bool, steps_per_epoch: int) -> list[Any]:
    """Every callback of the demo, in the order they run."""
    from treadle.callbacks import IterationTimer, LearningRateMonitor, ModelCheckpoint, ProgressBar

    return [
        # The best epoch by validation accuracy, plus last.ckpt for --resume.
        ModelCheckpoint(
            dirpath=root / "checkpoints", monitor="val_acc", mode="max", save_top_k=1, save_last=True
        ),
        LearningRateMonitor(logging_interval="step"),
        # One line per epoch with the time of that iteration, and mean/median/p90 when training ends.
        IterationTimer(every_n_steps=steps_per_epoch),
        ProgressBar() if progress_bar else ProgressBar(backend="plain", refresh_rate=100),
    ]


def draw_curves(log_dir: Path) -> Path | None:
    """Plot the run's loss, accuracy and learning rate to ``log_dir/curves.png`` (needs matplotlib)."""
    try:
        from treadle.loggers import read_csv_metrics
        from treadle.plot import plot_metrics

        # A run stopped early (SIGTERM in its first epoch) may not have logged every curve yet.
        logged = read_csv_metrics(log_dir / "metrics.csv")
        wanted = [name for name in ("train_loss", "val_loss", "val_acc", "lr-AdamW") if logged.get(name)]
        if not wanted:
            return None
        return plot_metrics(log_dir, output=log_dir / "curves.png", metrics=wanted)
    except ModuleNotFoundError as missing:
        print(f"No curves: {missing}")
        return None


def run_demo(root: str | os.PathLike[str], resume: bool, max_epochs: int | None, progress_bar: bool) -> int:
    """Train the digit classifier; returns 0 if validation accuracy reached the target, 1 if not.

    Args:
        root: folder for ``logs/version_N/metrics.csv`` and ``checkpoints/last.ckpt``.
        resume: continue from ``root/checkpoints/last.ckpt`` (and append to the latest log version).
        max_epochs: train this many epochs in total instead of the default.
        progress_bar: a redrawing progress bar (True) or plain lines (False).

    Example::

        run_demo("demo_runs", resume=False, max_epochs=None, progress_bar=True)
    """
    root = Path(root)
    epochs = MAX_EPOCHS if max_epochs is None else max_epochs
    if epochs < 1:
        raise ValueError(f"treadle demo --max-epochs {epochs}: give a positive number of epochs, e.g. 5.")
    checkpoint = root / "checkpoints" / "last.ckpt"
    if resume and not checkpoint.exists():
        print(f"No checkpoint at {checkpoint} to resume from; starting a new run.")
        resume = False
    if resume:
        finished = _finished_run(checkpoint, epochs)
        if finished is not None:
            print(finished)
            return 0
    versions = next_version(root / "logs")
    logger = CSVLogger(
        root, name="logs", version=versions - 1 if resume and versions > 0 else None, resume=resume
    )
    seed_everything(SEED)
    train = DataLoader(make_digits(20000, seed=0), batch_size=64, shuffle=True)
    val = DataLoader(make_digits(2000, seed=1), batch_size=500)
    model = DigitClassifier(total_steps=epochs * len(train))
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=build_callbacks(root, progress_bar, steps_per_epoch=len(train)),
        loggers=logger,
        checkpoint_dir=root / "checkpoints",
        log_every_n_steps=10,
    )
    logger.log_hyperparams({"max_epochs": epochs, "batch_size": 64, "lr": model.lr, "seed": SEED})
    print(
        f"Training an MLP to read noisy 8x8 digits for {epochs} epochs on CPU"
        + (" (resumed)" if resume else "")
    )
    # A model this small gains nothing from several threads per operation, and on a busy machine the threads
    # wait for each other: one thread is several times faster. The caller's setting is put back afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer.fit(model, train, val, ckpt_path=checkpoint if resume else None)
    except KeyboardInterrupt:
        print(
            f"\nInterrupted. `treadle demo --root {root} --resume` continues from the last epoch's checkpoint."
        )
        return 130
    finally:
        torch.set_num_threads(threads)
    accuracy = trainer.callback_metrics.get("val_acc", math.nan)
    reached = accuracy >= TARGET_ACCURACY
    print(
        f"val_acc {accuracy:.3f} {'>=' if reached else '<'} target {TARGET_ACCURACY}"
        + ("" if reached else ": missed")
    )
    if trainer.preempted:
        print(f"Stopped early: {trainer.stop_reason}")
    curves = draw_curves(Path(logger.log_dir))
    print(f"logs:       {Path(logger.log_dir) / 'metrics.csv'}")
    if curves is not None:
        print(f"curves:     {curves}")
    print(f"checkpoint: {checkpoint}")
    print(f"resume:     treadle demo --root {root} --resume")
    return 0 if reached else 1


def _finished_run(checkpoint: Path, epochs: int) -> str | None:
    """What to say when ``checkpoint`` already holds ``epochs`` complete epochs (None if it does not): with
    nothing left to train, the Trainer would only restore it and stop."""
    from treadle.fabric import Fabric

    saved = Fabric(accelerator="cpu", devices=1).load(checkpoint)
    progress = saved.get("progress", {})
    done = int(progress.get("epoch", 0)) + bool(progress.get("epoch_finished", False))
    if done < epochs:
        return None
    accuracy = saved.get("callback_metrics", {}).get("val_acc")
    reached = "" if accuracy is None else f" (val_acc {float(accuracy):.3f})"
    root = checkpoint.parent.parent
    return (
        f"The run in {root} is complete: {checkpoint} holds {done} trained epochs{reached}, and {epochs} "
        f"were asked for: nothing is left to train.\nTo train it further, give the new total: treadle demo --root {root} "
        f"--resume --max-epochs {done + 4}\nTo start over, pick another folder: treadle demo --root "
        f"{root}_2"
    )
