"""Data parallelism through the course's one Trainer: each rank trains on its shard of every batch.

:class:`DataParallelTrainer` is :class:`mlakit.train.Trainer` with three changes:

- the step's batch ``batch_fn(step)`` (the same on every rank: it is a pure
  function of the step) is cut into ``world_size`` equal row shards and rank r
  keeps shard r;
- the loss runs through ``torch.nn.parallel.DistributedDataParallel``, which
  averages the gradients over the ranks during the backward. MoE layers route
  each rank's tokens differently, so an expert may get no token on one rank.
  The routed experts are stacked in one parameter per projection, so an idle
  expert is a zero slice of a gradient that exists; a parameter a step does not
  use at all (an MTP module skipped on short sequences, a loss that leaves a
  module out) would make DDP's second step fail, so DDP is built with
  ``find_unused_parameters=True`` by default (torch warns once when a step used
  every parameter; pass False to skip the extra graph traversal);
- the MoE loads are summed over the ranks before the auxiliary-loss-free bias
  update and the MaxVio metric, so every rank moves its biases alike, as one
  process on the full batch would; the logged loss is the mean over the ranks.

With a loss that is a mean over the same number of tokens on every rank (the
next-token loss on full rows; V3's sequence-wise balance loss, a mean over
sequences), the averaged gradient is the full batch's gradient, and training
equals one process on the full batch (tested to float tolerance). A
completion-only loss mask gives each rank the mean over its own masked tokens,
a slightly different weighting of the rows.

Checkpoints are written by rank 0 only (the others wait at a barrier).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..losses import LossOutput, pretrain_loss
from ..train import Batch, TrainConfig, Trainer


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """Rows ``[rank B/W, (rank + 1) B/W)`` of every tensor of the batch; B must be divisible by W."""
    sizes = {t.shape[0] for t in batch.values()}
    if len(sizes) != 1:
        raise ValueError(f"shard_batch: the batch's tensors have different numbers of rows {sorted(sizes)}")
    (rows,) = sizes
    if rows % world_size:
        raise ValueError(f"data parallelism over {world_size} processes needs a batch size divisible by "
                         f"{world_size}; the batch has {rows} rows")
    per = rows // world_size
    return {name: t[rank * per:(rank + 1) * per] for name, t in batch.items()}


class _LossModule(nn.Module):
    """The model and the loss as one module, so DDP sees the loss tensor and finds the parameters it used."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Batch], LossOutput]):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Batch):
        out = self.loss_fn(self.model, batch)
        return out.loss, out


class DataParallelTrainer(Trainer):
    """A :class:`mlakit.train.Trainer` over the default process group (see the module docstring).

    Build it on every rank with the same model (DDP copies rank 0's weights to
    the others) and the same ``batch_fn``; ``cfg.compile`` is not supported here.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, batch_fn: Callable[[int], Batch],
                 eval_fn: Callable[[nn.Module], dict] | None = None,
                 loss_fn: Callable[[nn.Module, Batch], LossOutput] = pretrain_loss, process_group=None,
                 find_unused_parameters: bool = True):
        if not dist.is_initialized():
            raise RuntimeError("DataParallelTrainer needs torch.distributed initialised (torchrun, or "
                               "mlakit.distributed.spawn)")
        if cfg.compile:
            raise ValueError("DataParallelTrainer with TrainConfig.compile=True is not supported: use compile=False")
        super().__init__(model, cfg, batch_fn, eval_fn, loss_fn)
        self.group = process_group
        self.rank, self.world_size = dist.get_rank(process_group), dist.get_world_size(process_group)
        self._ddp = DistributedDataParallel(_LossModule(model, loss_fn), find_unused_parameters=find_unused_parameters,
                                            process_group=process_group)

    def train_step(self) -> dict:
        self.model.train()
        device = next(self.model.parameters()).device
        batch = shard_batch(self.batch_fn(self.step), self.rank, self.world_size)
        _, out = self._ddp({name: t.to(device) for name, t in batch.items()})
        for r in getattr(out.output, "routing", None) or []:  # global loads, before the bias update
            dist.all_reduce(r.counts, group=self.group)
        record = {"step": self.step, **self.optimizer_step(out)}
        for name in [n for n in record if n == "loss" or n.startswith("loss_")]:
            value = torch.tensor(record[name], dtype=torch.float64)
            dist.all_reduce(value, group=self.group)
            record[name] = float(value) / self.world_size
        self.step += 1
        self.history.append(record)
        return record

    def save(self, folder: str | Path) -> Path:
        """Rank 0 writes the checkpoint (the ranks hold the same weights); every rank returns its path."""
        path = super().save(folder) if self.rank == 0 else Path(folder)
        dist.barrier(group=self.group)
        return path


__all__ = ["DataParallelTrainer", "shard_batch"]
