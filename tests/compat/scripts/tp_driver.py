"""Train Lightning's examples/fabric/tensor_parallel model with its own ``parallelize``, under treadle.

``model.py``, ``parallelism.py`` and ``data.py`` sit next to this file (imports switched, nothing else); the
loop is the example's ``train()`` at CPU size: 2 processes, data parallel x tensor parallel as given on the
command line. Rank 0 prints one JSON line of results.
"""

import json
import sys

import torch
import torch.nn.functional as F
from data import RandomTokenDataset
from model import ModelArgs, Transformer
from parallelism import parallelize
from torch.distributed.tensor.parallel import loss_parallel
from torch.utils.data import DataLoader

import treadle as L
from treadle.strategies import ModelParallelStrategy


def main(dp: int, tp: int) -> None:
    strategy = ModelParallelStrategy(
        parallelize_fn=parallelize, data_parallel_size=dp, tensor_parallel_size=tp
    )
    fabric = L.Fabric(accelerator="cpu", devices=dp * tp, strategy=strategy)
    fabric.launch()
    model_args = ModelArgs(vocab_size=128, dim=64, n_layers=2, n_heads=4, max_seq_len=64)
    with fabric.init_module(empty_init=True):
        model = Transformer(model_args)
    model = fabric.setup(model)
    model.init_weights()
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=3e-3, foreach=True))
    dataloader = fabric.setup_dataloaders(
        DataLoader(RandomTokenDataset(vocab_size=128, seq_length=32), batch_size=8)
    )
    losses = []
    for batch in dataloader:
        inputs, labels = batch[:, :-1], batch[:, 1:]
        output = model(inputs)
        with loss_parallel():
            loss = F.cross_entropy(output.reshape(-1, output.size(-1)), labels.reshape(-1))
            fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.full_tensor() if hasattr(loss, "full_tensor") else loss))
    fabric.save("checkpoint.pt", {"model": model, "optimizer": optimizer, "iteration": len(losses) - 1})
    if fabric.global_rank == 0:
        print(json.dumps({"iterations": len(losses), "first": losses[0], "last": losses[-1]}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
