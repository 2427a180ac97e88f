"""Expert parallelism: each rank holds a contiguous range of routed experts; tokens travel by all-to-all.

:class:`ExpertParallelMoE` is a :class:`mlakit.moe.DeepSeekMoE` split over the
ranks of a process group (DeepSeek-V3 §3.2: 64-way EP over 8 nodes). Rank r of
W holds routed experts ``[r E/W, (r + 1) E/W)`` (:class:`mlakit.moe.RoutedExperts`
slices them with their own per-expert seeds), the router and the shared experts
are replicated. One forward, on every rank with its own tokens:

1. route locally: the k (token, slot) rows of each token, sorted by expert
   (contiguous ranges, so also by destination rank);
2. exchange the split sizes: how many rows each local expert gets from each
   rank (one ``all_to_all_single`` of E int64 counts);
3. **dispatch**: the rows go to their experts' ranks (``all_to_all_single``
   with uneven splits, zeros allowed), in the activations' dtype, in bf16, or in
   fp8 with one float32 scale per 1x128 tile (packed and sent as uint8: gloo has
   no fp8 type);
4. the local experts run through the kernel op :func:`mlakit.kernels.moe_experts`;
5. **combine**: the results come back by the reverse all-to-all and are
   gate-weighted and summed at the source, then the shared experts are added.

Autograd flows through the collectives (torch's functional collectives,
``all_to_all_single_autograd``; the fp8 dispatch is straight-through: its
backward sends the gradients back in their own dtype). In the activations'
dtype the output and all gradients equal the single-process layer's.

Every forward counts what it moved in :attr:`ExpertParallelMoE.last_comm`:
the dispatched and combined bytes (equal to :func:`mlakit.distributed.comm_volume`),
the part that left the rank, and what sending each token once per destination
rank (DeepEP's dedup) would have cost.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc
from torch import nn

from ..kernels import moe_experts
from ..moe import V3_BIAS_UPDATE_SPEED, DeepSeekMoE, RoutedExperts
from .comm import COUNT_BYTES, FP8_BLOCK

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
WIRE_DTYPES = (None, "fp32", "bf16", "fp8")  # None: the activations' own dtype
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_ep_size(num_experts: int, world_size: int) -> int:
    """Experts per rank; ValueError naming both numbers when ``world_size`` does not divide ``num_experts``."""
    if world_size < 1 or num_experts % world_size:
        raise ValueError(f"expert parallelism over {world_size} processes needs n_routed_experts divisible by "
                         f"{world_size}; n_routed_experts={num_experts} is not (use a world size that divides "
                         f"{num_experts})")
    return num_experts // world_size


def fp8_pack(rows: torch.Tensor, block: int = FP8_BLOCK) -> torch.Tensor:
    """Rows (n, H) to uint8 (n, H + 4 ceil(H / block)): e4m3 values, then one float32 scale per 1 x ``block`` tile.

    scale = amax(tile) / 448 (1 for an all-zero tile), value = fp8(x / scale), cast in torch (round to nearest even).
    """
    n, H = rows.shape
    tiles = math.ceil(H / block)
    padded = torch.nn.functional.pad(rows.detach().float(), (0, tiles * block - H)).view(n, tiles, block)
    amax = padded.abs().amax(dim=-1)  # (n, tiles)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (padded / scale[..., None]).to(FP8).view(n, tiles * block)[:, :H]  # (n, H) fp8
    return torch.cat([q.contiguous().view(torch.uint8), scale.contiguous().view(torch.uint8)], dim=1)


def fp8_unpack(payload: torch.Tensor, hidden: int, dtype: torch.dtype, block: int = FP8_BLOCK) -> torch.Tensor:
    """Inverse of :func:`fp8_pack`: uint8 (n, H + 4 tiles) -> (n, H) in ``dtype`` (value * its tile's scale)."""
    n, tiles = payload.shape[0], math.ceil(hidden / block)
    q = payload[:, :hidden].contiguous().view(FP8).float()  # (n, H)
    scale = payload[:, hidden:].contiguous().view(torch.float32)  # (n, tiles)
    q = torch.nn.functional.pad(q, (0, tiles * block - hidden)).view(n, tiles, block) * scale[..., None]
    return q.view(n, tiles * block)[:, :hidden].to(dtype)


def _a2a(t: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    out = t.new_empty((sum(out_splits), *t.shape[1:]))
    dist.all_to_all_single(out, t.contiguous(), out_splits, in_splits, group=group)
    return out


class _FP8Dispatch(torch.autograd.Function):
    """Rows to their ranks in fp8 (sent as uint8); the backward returns the gradients in their own dtype."""

    @staticmethod
    def forward(ctx, rows, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        received = _a2a(fp8_pack(rows), out_splits, in_splits, group)
        return fp8_unpack(received, rows.shape[1], rows.dtype)

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        return _a2a(grad, in_splits, out_splits, ctx.group), None, None, None


@dataclass
class CommRecord:
    """What one forward of :class:`ExpertParallelMoE` sent from this rank (bytes)."""

    rows: int  # (token, slot) rows dispatched, own rank included
    dispatch_bytes: int  # rows through the dispatch all-to-all
    combine_bytes: int  # rows through the combine all-to-all
    count_bytes: int  # the split-size exchange
    remote_rows: int  # rows that left the rank
    remote_dispatch_bytes: int
    remote_combine_bytes: int
    dedup_remote_rows: int  # rows leaving the rank if each token went once per destination rank (DeepEP)


class ExpertParallelMoE(nn.Module):
    """One DeepSeekMoE layer split over a process group: this rank's experts, replicated router and shared experts.

    Build it with :meth:`from_moe` on every rank from the same full layer (or
    from layers built alike: the experts' per-expert seeds make the slices
    agree). ``dispatch_dtype`` / ``combine_dtype``: the wire formats, None (the
    activations' dtype, exact), "fp32", "bf16" or "fp8" (dispatch only).
    """

    kernel_ops = ("moe_experts",)  # :func:`mlakit.kernels.set_backend` sets ``backend`` here too

    def __init__(self, moe: DeepSeekMoE, process_group=None, dispatch_dtype: str | None = None,
                 combine_dtype: str | None = None):
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError("ExpertParallelMoE needs torch.distributed initialised (mlakit.distributed.spawn, "
                               "or torchrun and init_process_group)")
        if dispatch_dtype not in WIRE_DTYPES or combine_dtype not in WIRE_DTYPES or combine_dtype == "fp8":
            raise ValueError(f"dispatch_dtype={dispatch_dtype!r}, combine_dtype={combine_dtype!r} are invalid: "
                             "dispatch in None, 'fp32', 'bf16' or 'fp8'; combine in None, 'fp32' or 'bf16'")
        self.group = process_group
        self.world_size, self.rank = dist.get_world_size(process_group), dist.get_rank(process_group)
        config = moe.config
        self.num_experts = config.n_routed_experts
        self.local_experts = check_ep_size(self.num_experts, self.world_size)
        self.first_expert = self.rank * self.local_experts
        self.config, self.dispatch, self.backend = config, moe.dispatch, moe.backend
        self.dispatch_dtype, self.combine_dtype = dispatch_dtype, combine_dtype
        self.gate = copy.deepcopy(moe.gate)
        self.shared_experts = copy.deepcopy(moe.shared_experts)
        w = moe.experts.gate_up_proj
        self.experts = RoutedExperts(config, self.first_expert, self.local_experts, seed=moe.experts.seed).to(
            device=w.device, dtype=w.dtype)
        lo = self.first_expert - moe.experts.first_expert  # this rank's experts inside the layer's slice
        hi = lo + self.local_experts
        if lo < 0 or hi > moe.experts.num_local_experts:
            raise ValueError(f"from_moe needs a layer holding experts [{self.first_expert}, "
                             f"{self.first_expert + self.local_experts}); it holds "
                             f"[{moe.experts.first_expert}, {moe.experts.first_expert + moe.experts.num_local_experts})")
        with torch.no_grad():
            self.experts.gate_up_proj.copy_(moe.experts.gate_up_proj[lo:hi])
            self.experts.down_proj.copy_(moe.experts.down_proj[lo:hi])
        self.last_comm: CommRecord | None = None

    @classmethod
    def from_moe(cls, moe: DeepSeekMoE, process_group=None, **kwargs) -> ExpertParallelMoE:
        """This rank's share of ``moe`` over ``process_group`` (None: the default group); see the class docstring."""
        return cls(moe, process_group, **kwargs)

    def _send(self, rows, out_splits, in_splits, wire):
        if wire == "fp8":
            return _FP8Dispatch.apply(rows, out_splits, in_splits, self.group)
        dtype = _TORCH_DTYPES.get(wire, rows.dtype)
        group = self.group if self.group is not None else dist.group.WORLD
        sent = fc.all_to_all_single_autograd(rows.to(dtype), out_splits, in_splits, group)
        return sent.to(rows.dtype)

    @staticmethod
    def _wire_bytes(rows: int, hidden: int, wire: str | None, dtype: torch.dtype) -> int:
        if wire == "fp8":
            return rows * (hidden + 4 * math.ceil(hidden / FP8_BLOCK))
        return rows * hidden * (_TORCH_DTYPES.get(wire, dtype).itemsize)

    def forward(self, x: torch.Tensor, return_routing: bool = False):
        """x (..., H) of this rank -> (..., H); with ``return_routing`` the pair (output, RouterOutput of this rank)."""
        tokens = x.reshape(-1, x.shape[-1])  # (N, H)
        N, H = tokens.shape
        W, L = self.world_size, self.local_experts
        routing = self.gate(tokens)
        k = routing.indices.shape[1]
        flat = routing.indices.reshape(-1)  # (N k,) slot s = t k + j
        order = torch.argsort(flat, stable=True)  # slots by expert, hence by destination rank
        send_counts = torch.bincount(flat, minlength=self.num_experts)  # (E,): rows to each expert, in rank order
        recv_counts = torch.empty_like(send_counts)  # (E,) = (W, L): rows from each rank for each local expert
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)  # the split-size exchange
        in_splits = send_counts.view(W, L).sum(1).tolist()
        recv = recv_counts.view(W, L)
        out_splits = recv.sum(1).tolist()
        received = self._send(tokens[order // k], out_splits, in_splits, self.dispatch_dtype)  # (M, H)
        local_ids = torch.repeat_interleave(torch.arange(L, device=x.device).repeat(W), recv.reshape(-1))  # (M,)
        ones = torch.ones(received.shape[0], 1, dtype=received.dtype, device=received.device)
        y = moe_experts(received, ones, local_ids[:, None], self.experts.gate_up_proj, self.experts.down_proj,
                        backend=self.backend, dispatch=self.dispatch)  # (M, H)
        back = self._send(y, in_splits, out_splits, self.combine_dtype)  # (N k, H) in sorted slot order
        slots = back[torch.argsort(order)].view(N, k, H)  # slot order
        routed = (slots * routing.weights.to(slots.dtype)[..., None]).sum(1)
        out = routed.view(x.shape)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        self._account(N * k, in_splits, routing.indices, H, x.dtype)
        return (out, routing) if return_routing else out

    def _account(self, rows: int, in_splits: list[int], indices: torch.Tensor, H: int, dtype: torch.dtype) -> None:
        remote = rows - in_splits[self.rank]
        ranks = indices // self.local_experts  # (N, k) destination rank of each slot
        per_token = torch.zeros(indices.shape[0], self.world_size, dtype=torch.bool, device=indices.device)
        per_token.scatter_(1, ranks, True)
        per_token[:, self.rank] = False
        b = self._wire_bytes
        self.last_comm = CommRecord(
            rows, b(rows, H, self.dispatch_dtype, dtype), b(rows, H, self.combine_dtype, dtype),
            COUNT_BYTES * self.num_experts, remote, b(remote, H, self.dispatch_dtype, dtype),
            b(remote, H, self.combine_dtype, dtype), int(per_token.sum()))

    def update_bias(self, counts: torch.Tensor, gamma: float = V3_BIAS_UPDATE_SPEED) -> None:
        """The router's aux-loss-free bias step with loads ``counts`` (E,). Pass the loads summed over the
        ranks (``dist.all_reduce``): the routing counts of one forward are this rank's tokens only."""
        self.gate.update_bias(counts, gamma)

    def extra_repr(self) -> str:
        return (f"rank={self.rank}/{self.world_size}, experts=[{self.first_expert}, "
                f"{self.first_expert + self.local_experts}) of {self.num_experts}, dispatch={self.dispatch_dtype}, "
                f"combine={self.combine_dtype}")


__all__ = ["ExpertParallelMoE", "CommRecord", "check_ep_size", "fp8_pack", "fp8_unpack"]
