"""Jobs for :func:`mlakit.distributed.spawn`, shared by lesson 13, the tests and ``bench/ep.py``.

Each job is ``fn(rank, world_size, *args)`` and returns plain tensors and
numbers, so the parent process can compare them with one process doing the
whole work (a notebook cannot send its own functions to new processes: they
live here). The problems are built from a seed alike in every process and in
the parent: :func:`ep_problem` and :class:`RandomBatches`.
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.distributed as dist

from ..config import ModelConfig
from ..model import MiniDeepSeek
from ..moe import DeepSeekMoE
from ..train import TrainConfig
from .data_parallel import DataParallelTrainer
from .expert_parallel import ExpertParallelMoE


def ep_problem(config: ModelConfig, seed: int, num_tokens: int) -> tuple[DeepSeekMoE, torch.Tensor, torch.Tensor]:
    """The full MoE layer, ``num_tokens`` input tokens (num_tokens, H) and an upstream gradient, all from ``seed``."""
    torch.manual_seed(seed)
    moe = DeepSeekMoE(config)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(num_tokens, config.hidden_size, generator=g)
    grad = torch.randn(num_tokens, config.hidden_size, generator=g)
    return moe, x, grad


def reference_moe(config: ModelConfig, seed: int, num_tokens: int) -> dict:
    """One process, the whole batch: output, input gradient and every parameter's gradient of :func:`ep_problem`."""
    moe, x, grad = ep_problem(config, seed, num_tokens)
    x = x.requires_grad_()
    out = moe(x)
    out.backward(grad)
    return {"out": out.detach(), "x_grad": x.grad, "grads": {n: p.grad for n, p in moe.named_parameters()}}


def ep_forward_backward(rank: int, world_size: int, config: ModelConfig, seed: int, tokens_per_rank: int,
                        dispatch_dtype: str | None = None, combine_dtype: str | None = None) -> dict:
    """This rank's share of :func:`ep_problem` through :class:`ExpertParallelMoE`: output, gradients, bytes moved.

    Rank r takes tokens ``[r T, (r + 1) T)``. Returned: ``out`` and ``x_grad`` of those tokens,
    ``grads`` of this rank's parameters (router and shared experts: this rank's tokens only),
    ``first_expert``, and ``comm`` (the :class:`CommRecord` as a dict).
    """
    moe, x, grad = ep_problem(config, seed, tokens_per_rank * world_size)
    rows = slice(rank * tokens_per_rank, (rank + 1) * tokens_per_rank)
    ep = ExpertParallelMoE.from_moe(moe, dispatch_dtype=dispatch_dtype, combine_dtype=combine_dtype)
    x_local = x[rows].clone().requires_grad_()
    out = ep(x_local)
    out.backward(grad[rows])
    return {"out": out.detach(), "x_grad": x_local.grad, "first_expert": ep.first_expert,
            "grads": {n: p.grad for n, p in ep.named_parameters()}, "comm": dataclasses.asdict(ep.last_comm)}


def ep_error(rank: int, world_size: int, config: ModelConfig) -> str:
    """The message ExpertParallelMoE.from_moe raises for ``config`` on this world size ("" if none)."""
    try:
        ExpertParallelMoE.from_moe(DeepSeekMoE(config))
    except ValueError as e:
        return str(e)
    return ""


def ep_timing(rank: int, world_size: int, config: ModelConfig, seed: int, tokens_per_rank: int, repeats: int,
              dispatch_dtype: str | None = None, combine_dtype: str | None = None, device: str = "cpu") -> dict:
    """Median seconds of one forward + backward of the expert-parallel layer, and the bytes of its last forward.

    ``device`` "cpu" (gloo) or "cuda" (nccl: rank r on GPU r).
    """
    dev = torch.device(f"cuda:{rank}" if device == "cuda" else "cpu")
    moe, x, grad = ep_problem(config, seed, tokens_per_rank * world_size)
    rows = slice(rank * tokens_per_rank, (rank + 1) * tokens_per_rank)
    ep = ExpertParallelMoE.from_moe(moe.to(dev), dispatch_dtype=dispatch_dtype, combine_dtype=combine_dtype)
    x_local, grad_local = x[rows].to(dev).requires_grad_(), grad[rows].to(dev)
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        dist.barrier()
        start = time.perf_counter()
        ep(x_local).backward(grad_local)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dist.barrier()
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return {"seconds": times[len(times) // 2], "comm": dataclasses.asdict(ep.last_comm)}


class RandomBatches:
    """Language-model batches of uniform random tokens, a pure function of the step (every row counts in the loss)."""

    def __init__(self, vocab_size: int, batch_size: int, seq_len: int, seed: int = 0):
        self.vocab_size, self.batch_size, self.seq_len, self.seed = vocab_size, batch_size, seq_len, seed

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        seqs = torch.randint(self.vocab_size, (self.batch_size, self.seq_len + 1), generator=g)
        return {"input_ids": seqs[:, :-1], "targets": seqs[:, 1:]}


def train_data_parallel(rank: int, world_size: int, config: ModelConfig, train_config: TrainConfig,
                        batches: RandomBatches, checkpoint: str | None = None) -> dict:
    """Train a MiniDeepSeek seeded by ``train_config.seed`` with :class:`DataParallelTrainer`; its weights, history
    and the gradients of the last step (averaged over the ranks, after clipping).

    With ``checkpoint``, rank 0 writes the checkpoint there at the end.
    """
    torch.manual_seed(train_config.seed)
    model = MiniDeepSeek(config)
    trainer = DataParallelTrainer(model, train_config, batches)
    trainer.train()
    if checkpoint is not None:
        trainer.save(checkpoint)
    return {"state": {n: t.detach().clone() for n, t in model.state_dict().items()}, "history": trainer.history,
            "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}


__all__ = ["ep_problem", "reference_moe", "ep_forward_backward", "ep_error", "ep_timing", "RandomBatches",
           "train_data_parallel"]
