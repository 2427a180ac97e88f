"""How many bytes expert parallelism moves, in theory: per step of one rank, and per token of DeepSeek-V3.

Expert parallelism (EP) over ``ep_size`` ranks puts ``E / ep_size`` routed
experts on each rank. Every token's k (token, slot) rows travel to the ranks
of their experts (the **dispatch**, one all-to-all), run there and come back
(the **combine**, the reverse all-to-all), where they are gate-weighted and
summed. Before the rows, the ranks exchange how many rows each expert gets
from each rank (the **split sizes**, E int64 counts per rank).

:func:`comm_volume` is the theory for :class:`mlakit.distributed.ExpertParallelMoE`,
which sends one row per (token, slot): its measured bytes equal these numbers
exactly (rows to the rank's own experts included: the all-to-all copies them
too; the part that leaves the rank is routing-dependent, ``(ep - 1) / ep`` of
it under balanced routing).

DeepSeek-V3 (V3 §3.2, DeepEP): dispatch in FP8 with one float32 scale per
1x128 tile of the hidden vector, combine in BF16; node-limited routing sends a
token to at most ``topk_group`` = 4 of the 8 nodes, and it crosses InfiniBand
once per target node (then NVLink inside the node), so its cross-node bytes are
per node, not per expert: :func:`v3_bytes_per_token`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import ModelConfig

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
FP8_BLOCK = 128  # V3's activation tiles: one float32 scale per 1x128 elements
SCALE_BYTES = 4  # a float32 scale
COUNT_BYTES = 8  # an int64 split size
IB_GBPS = 50.0  # H800 InfiniBand per GPU, GB/s (V3 §3.2.2)
NVLINK_GBPS = 160.0  # H800 NVLink achieved, GB/s (V3 §3.2.2; 400 nominal)
V3_NODES = 8  # V3's 64-way EP spans 8 nodes of 8 GPUs
V3_SMS, V3_COMM_SMS = 132, 20  # SMs of an H800, and those V3 gave to communication


def row_bytes(hidden: int, dtype: str, block: int = FP8_BLOCK) -> int:
    """Bytes of one hidden vector on the wire: H elements, plus a float32 scale per ``block`` for fp8."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r} is invalid: use one of {', '.join(map(repr, DTYPE_BYTES))}")
    if hidden < 1 or block < 1:
        raise ValueError(f"row_bytes hidden={hidden}, block={block} are invalid: both must be >= 1")
    scales = SCALE_BYTES * math.ceil(hidden / block) if dtype == "fp8" else 0
    return hidden * DTYPE_BYTES[dtype] + scales


@dataclass(frozen=True)
class CommVolume:
    """Bytes one rank puts into the all-to-alls of one MoE forward (its receive side is the same on average)."""

    rows: int  # (token, slot) rows dispatched: num_tokens * k
    dispatch_bytes: int  # rows * row_bytes(H, dispatch dtype)
    combine_bytes: int  # rows * row_bytes(H, combine dtype)
    count_bytes: int  # the split-size exchange: E int64 counts
    remote_fraction: float  # expected share of rows that leave the rank under balanced routing: (ep - 1) / ep

    @property
    def total_bytes(self) -> int:
        return self.dispatch_bytes + self.combine_bytes + self.count_bytes


def comm_volume(config: ModelConfig, num_tokens: int, ep_size: int, dispatch_dtype: str = "bf16",
                combine_dtype: str = "bf16", block: int = FP8_BLOCK) -> CommVolume:
    """The bytes one rank sends through the all-to-alls of one MoE layer's forward for ``num_tokens`` tokens.

    One row per (token, slot): ``num_tokens * k`` rows of ``row_bytes(H, dtype)``
    in each direction, plus the split sizes (E int64). The backward moves the
    same rows again, the other way (gradients, in the activations' dtype).
    """
    E, k, H = config.n_routed_experts, config.num_experts_per_tok, config.hidden_size
    if E < 1:
        raise ValueError("comm_volume needs an MoE config: n_routed_experts is 0")
    if num_tokens < 0:
        raise ValueError(f"comm_volume num_tokens={num_tokens} is invalid: must be >= 0")
    if ep_size < 1 or E % ep_size:
        raise ValueError(f"comm_volume ep_size={ep_size} is invalid: must be >= 1 and divide "
                         f"n_routed_experts={E}")
    rows = num_tokens * k
    return CommVolume(rows, rows * row_bytes(H, dispatch_dtype, block), rows * row_bytes(H, combine_dtype, block),
                      COUNT_BYTES * E, (ep_size - 1) / ep_size)


def expected_nodes_per_token(num_experts: int, k: int, nodes: int) -> float:
    """Expected distinct nodes among k distinct experts drawn uniformly from E experts spread evenly on ``nodes``.

    nodes * (1 - C(E - E/nodes, k) / C(E, k)): a node is missed when all k experts lie elsewhere.
    """
    if nodes < 1 or num_experts % nodes or not 1 <= k <= num_experts:
        raise ValueError(f"expected_nodes_per_token num_experts={num_experts}, k={k}, nodes={nodes} are invalid: "
                         "nodes must divide num_experts and 1 <= k <= num_experts")
    per_node = num_experts // nodes
    return nodes * (1 - math.comb(num_experts - per_node, k) / math.comb(num_experts, k))


def nodes_per_token(indices, experts_per_node: int):
    """Distinct nodes each token's experts lie on, (T,) int64, from the router's choices ``indices`` (T, k)
    when node n holds the experts ``[n experts_per_node, (n + 1) experts_per_node)``."""
    import torch

    if experts_per_node < 1:
        raise ValueError(f"experts_per_node={experts_per_node} is invalid: must be >= 1")
    nodes = indices // experts_per_node  # (T, k)
    hit = torch.zeros(indices.shape[0], int(nodes.max()) + 1 if nodes.numel() else 1, dtype=torch.bool,
                      device=indices.device)
    return hit.scatter_(1, nodes, True).sum(1)


@dataclass(frozen=True)
class TokenTraffic:
    """Cross-node (InfiniBand) bytes of one token through one MoE layer, V3-style (once per target node)."""

    nodes: float  # target nodes of the token (at most topk_group with node-limited routing; expected without)
    dispatch_bytes: float  # nodes * row_bytes(H, dispatch dtype)
    combine_bytes: float  # nodes * row_bytes(H, combine dtype)

    @property
    def total_bytes(self) -> float:
        return self.dispatch_bytes + self.combine_bytes

    def seconds(self, gbps: float) -> float:
        """Time to move this token's dispatch and combine at ``gbps`` GB/s."""
        return self.total_bytes / (gbps * 1e9)


def v3_bytes_per_token(config: ModelConfig, node_limited: bool = True, nodes: int = V3_NODES,
                       dispatch_dtype: str = "fp8", combine_dtype: str = "bf16") -> TokenTraffic:
    """A token's cross-node bytes in one MoE layer: once per target node, dispatch in fp8 (1x128 scales), combine in bf16.

    With node-limited routing a token reaches at most ``topk_group`` nodes (V3: 4 of 8); without it, its k
    experts fall on :func:`expected_nodes_per_token` nodes (V3: 5.3 of 8 on average, up to 8).
    """
    E, k, H = config.n_routed_experts, config.num_experts_per_tok, config.hidden_size
    n = min(config.topk_group, nodes) if node_limited else expected_nodes_per_token(E, k, nodes)
    return TokenTraffic(n, n * row_bytes(H, dispatch_dtype), n * row_bytes(H, combine_dtype))


__all__ = ["comm_volume", "CommVolume", "row_bytes", "expected_nodes_per_token", "nodes_per_token", "v3_bytes_per_token", "TokenTraffic",
           "DTYPE_BYTES", "FP8_BLOCK", "IB_GBPS", "NVLINK_GBPS", "V3_NODES", "V3_SMS", "V3_COMM_SMS"]
