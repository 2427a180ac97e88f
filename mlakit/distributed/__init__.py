"""Scaling out: data parallelism, expert parallelism and the communication DeepSeek optimised.

DeepSeek-V3 (§3.2, arXiv 2412.19437) trained on 2048 H800 GPUs with 16-way
pipeline parallelism (DualPipe), 64-way expert parallelism over 8 nodes and
ZeRO-1 data parallelism. This package builds data and expert parallelism on
``torch.distributed`` (gloo on the CPU, nccl on GPUs), proves them equal to one
process, and counts the bytes:

| module | holds |
|---|---|
| :mod:`~mlakit.distributed.launch` | :func:`spawn` (local processes with a process group), :func:`init_from_env`, :func:`torchrun_command` |
| :mod:`~mlakit.distributed.data_parallel` | :class:`DataParallelTrainer` (DDP through the course's Trainer), :func:`shard_batch` |
| :mod:`~mlakit.distributed.expert_parallel` | :class:`ExpertParallelMoE` (all-to-all dispatch and combine, autograd through the collectives, fp8 dispatch as uint8), :func:`check_ep_size` |
| :mod:`~mlakit.distributed.comm` | :func:`comm_volume` (the theory the layer's byte counts equal), :func:`v3_bytes_per_token` (node-limited routing, fp8 / bf16) |
| :mod:`~mlakit.distributed.pipeline` | the bubbles of 1F1B, ZB1P and DualPipe, :func:`simulate_1f1b` |
| :mod:`~mlakit.distributed.workers` | jobs for :func:`spawn` used by lesson 13, the tests and bench/ep.py |
"""

from .comm import (
    DTYPE_BYTES,
    FP8_BLOCK,
    IB_GBPS,
    NVLINK_GBPS,
    V3_COMM_SMS,
    V3_NODES,
    V3_SMS,
    CommVolume,
    TokenTraffic,
    comm_volume,
    expected_nodes_per_token,
    nodes_per_token,
    row_bytes,
    v3_bytes_per_token,
)
from .data_parallel import DataParallelTrainer, shard_batch
from .expert_parallel import CommRecord, ExpertParallelMoE, check_ep_size, fp8_pack, fp8_unpack
from .launch import free_port, init_from_env, spawn, torchrun_command
from .pipeline import (
    SCHEDULES,
    Op,
    bubble,
    bubble_1f1b,
    bubble_dualpipe,
    bubble_fraction,
    bubble_zb1p,
    idle_per_stage,
    simulate_1f1b,
    simulate_zb1p,
)

__all__ = [
    "spawn", "free_port", "init_from_env", "torchrun_command", "DataParallelTrainer", "shard_batch",
    "ExpertParallelMoE", "CommRecord", "check_ep_size", "fp8_pack", "fp8_unpack", "comm_volume", "CommVolume",
    "row_bytes", "expected_nodes_per_token", "nodes_per_token", "v3_bytes_per_token", "TokenTraffic", "DTYPE_BYTES", "FP8_BLOCK",
    "IB_GBPS", "NVLINK_GBPS", "V3_NODES", "V3_SMS", "V3_COMM_SMS", "bubble", "bubble_1f1b", "bubble_zb1p",
    "bubble_dualpipe", "bubble_fraction", "simulate_1f1b", "simulate_zb1p", "idle_per_stage", "Op", "SCHEDULES",
]
