"""Routed experts of DeepSeekMoE, stored stacked, and the strategies that dispatch tokens to them.

DeepSeekMoE (DeepSeek-V2 §2.2, arXiv 2405.04434; DeepSeek-V3 §2.1.2, arXiv
2412.19437) splits the FFN into many fine-grained SwiGLU experts; each token
runs through the k its router chose. :class:`RoutedExperts` stores them stacked
with the expert first, in transformers' in-memory layout: ``gate_up_proj``
(E, 2I, H), expert j's gate rows then its up rows, and ``down_proj`` (E, H, I).
Why stacked and fused:

- a grouped GEMM consumes one weight tensor plus offsets, and fused-MoE
  kernels run gate and up as ONE grouped GEMM (the "w13" of open-source
  servers), so the future Triton path needs no reshuffling;
- each expert does one (2I x H) matmul instead of two (I x H) ones;
- the layer's state dict is key for key and shape for shape the state dict of
  transformers' DeepseekV3MoE, so weights move with ``load_state_dict``;
  :mod:`mlakit.moe.layout` maps it 1:1 to the per-expert on-disk names.

Dispatch strategies, equal in outputs and gradients (``dispatch=``):

- ``"loop"``: the readable reference: for each expert gather its tokens, run
  it, scatter the weighted result back;
- ``"sorted"`` (the default): sort the (token, k) slots by expert with a
  stable argsort, run each expert on its contiguous segment and combine with
  one fused weighted gather-sum (:class:`GroupedSwiGLU`, forward and backward
  written out, the one place a grouped GEMM plugs in): no atomics, so results
  are bitwise reproducible;
- ``"triton"``: reserved for a Triton grouped GEMM; not available yet (a
  kernel registers itself in ``DISPATCH_FUNCTIONS``).

On a CPU each segment is still its own matmul, so what separates the
strategies is data movement: the sorted path reads each expert's tokens
straight into its matmul, writes its results into one preallocated buffer and
un-permutes, weights and sums them in one ``embedding_bag``, which puts it
within about 1.2x of a dense SwiGLU over the same rows and ahead of the loop
(bench/moe_dispatch.py). ``torch.nn.functional.grouped_mm`` runs on CPU in
torch 2.13 but is documented for bf16 on CUDA SM80+, needs 16-byte aligned
strides and its backward fails on zero-stride gradients, so it is not used.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig

PLANNED_DISPATCHES = {"triton": "a Triton grouped GEMM"}  # registered in DISPATCH_FUNCTIONS when built


def swiglu(x: torch.Tensor, gate_up_w: torch.Tensor, down_w: torch.Tensor) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)), the formula of :class:`mlakit.layers.SwiGLU`, with gate and up fused.

    ``gate_up_w`` (2I, H) holds the gate rows first, then the up rows; ``down_w`` is (H, I).
    """
    gate, up = F.linear(x, gate_up_w).chunk(2, dim=-1)  # (n, 2I) -> (n, I), (n, I)
    return F.linear(F.silu(gate) * up, down_w)


class RoutedExperts(nn.Module):
    """E SwiGLU experts of width I, stacked: ``gate_up_proj`` (E, 2I, H) gate rows first, ``down_proj`` (E, H, I)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, H, I = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.num_experts, self.hidden_size, self.intermediate_size = E, H, I
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H))
        self.down_proj = nn.Parameter(torch.empty(E, H, I))
        for w, fan_in in ((self.gate_up_proj, H), (self.down_proj, I)):
            nn.init.uniform_(w, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))  # nn.Linear's default, per expert

    def per_expert(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(gate_up, down) weight views of each expert.

        ``unbind`` rather than indexing in a loop: its backward stacks the E
        gradients once instead of building a full-size zero tensor per expert.
        """
        return list(zip(self.gate_up_proj.unbind(0), self.down_proj.unbind(0), strict=True))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                dispatch: str = "sorted") -> torch.Tensor:
        """sum_k weights[t, k] * expert_{indices[t, k]}(x[t]) for x (T, H), weights and indices (T, k)."""
        return get_dispatch(dispatch)(self, x, weights, indices)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, hidden={self.hidden_size}, intermediate={self.intermediate_size}"


def dispatch_loop(experts: RoutedExperts, x: torch.Tensor, weights: torch.Tensor,
                  indices: torch.Tensor) -> torch.Tensor:
    """Reference dispatch: per expert, gather its tokens, run it, add the weighted result back."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # (T, H) accumulated in float32
    for e, (gate_up_w, down_w) in enumerate(experts.per_expert()):
        token_idx, slot = torch.where(indices == e)  # tokens that chose e, and in which of their k slots
        if token_idx.numel() == 0:
            continue
        y = swiglu(x[token_idx], gate_up_w, down_w)  # (n_e, H)
        # a token picks an expert at most once, so token_idx has no repeats: no accumulation race
        out.index_add_(0, token_idx, y.float() * weights[token_idx, slot, None])
    return out.to(x.dtype)


def sort_by_expert(indices: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation of the T*k slots (slot = t * k + j) grouping them by expert, and the counts (E,).

    The argsort is stable, so within an expert the slots stay in token order and
    the permutation depends only on the routing, never on the hardware.
    """
    flat = indices.reshape(-1)  # (T*k,)
    order = torch.argsort(flat, stable=True)  # (T*k,)
    return order, torch.bincount(flat, minlength=num_experts)


class GroupedSwiGLU(torch.autograd.Function):
    """Every expert on its contiguous segment of expert-sorted rows, then the gate-weighted combine.

    ``forward(x, weights, gate_up_proj, down_proj, order, sizes)``: x (T, H)
    tokens, weights (T, k) gate weights, the stacked expert weights, ``order``
    (T*k,) the slots sorted by expert and ``sizes`` (a list of E ints) the
    segment lengths. Returns (T, H) = sum_j weights[t, j] * expert_{e(t, j)}(x[t]).

    This is the grouped GEMM of fused-MoE kernels written with torch ops, with
    the data movement kept to what the computation needs:

    - each expert reads its tokens with one ``index_select`` straight into its
      matmul (no full-size gathered copy of the batch);
    - its down projection writes into its segment of one preallocated (T*k, H)
      buffer (``out=``: no list of pieces, no ``cat``);
    - un-permuting, weighting and summing the k rows of each token is ONE
      ``embedding_bag`` (mode "sum" with per-sample weights), a fused
      gather-and-reduce: each output row is the sum of its k rows in slot order,
      with no atomics and no scatter, so results are bitwise reproducible.

    The backward is written out the same way (per segment: the upstream rows of
    its tokens, the SwiGLU derivative, the weight gradients as two matmuls, the
    input gradient into a sorted buffer combined by ``embedding_bag``). It saves
    the (T*k, 2I) gate/up activations and the (T*k, H) expert outputs. A Triton
    grouped GEMM replaces exactly this function.
    """

    @staticmethod
    def forward(ctx, x, weights, gate_up_proj, down_proj, order, sizes, reuse_buffers=False):
        T, k = weights.shape
        token_of = order // k  # (T*k,): the token of each sorted row
        positions = torch.empty_like(order)
        positions[order] = torch.arange(order.numel(), device=order.device)
        positions = positions.view(T, k)  # sorted row of slot (t, j)
        new = _workspace if reuse_buffers else (lambda name, shape, like: like.new_empty(shape))
        gate_up = new("gate_up", (order.numel(), gate_up_proj.shape[1]), x)  # (T*k, 2I)
        y = new("y", (order.numel(), x.shape[1]), x)  # (T*k, H) expert outputs, expert order
        for e, (a, b) in _segments(sizes):
            torch.mm(x.index_select(0, token_of[a:b]), gate_up_proj[e].t(), out=gate_up[a:b])
            gate, up = gate_up[a:b].chunk(2, dim=-1)  # (n_e, I) each
            torch.mm(F.silu(gate) * up, down_proj[e].t(), out=y[a:b])
        out = F.embedding_bag(positions, y, mode="sum", per_sample_weights=weights.to(y.dtype))  # (T, H)
        ctx.save_for_backward(x, weights, gate_up_proj, down_proj, order, positions, gate_up, y)
        ctx.sizes = sizes
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weights, gate_up_proj, down_proj, order, positions, gate_up, y = ctx.saved_tensors
        need_x, need_w, need_gu, need_down = ctx.needs_input_grad[:4]
        T, k = weights.shape
        token_of = order // k
        w_sorted = weights.reshape(-1)[order].to(y.dtype)[:, None]  # (T*k, 1)
        grad_out = grad_out.contiguous()
        grad_x_sorted = torch.empty_like(y) if need_x else None  # (T*k, H), combined like the forward
        grad_w_sorted = torch.empty(order.numel(), dtype=weights.dtype, device=weights.device) if need_w else None
        grad_gu = torch.zeros_like(gate_up_proj) if need_gu else None  # experts without tokens get zeros
        grad_down = torch.zeros_like(down_proj) if need_down else None
        for e, (a, b) in _segments(ctx.sizes):
            g_rows = grad_out.index_select(0, token_of[a:b])  # (n_e, H): upstream gradient of each row's token
            if need_w:
                grad_w_sorted[a:b] = torch.linalg.vecdot(g_rows, y[a:b]).to(weights.dtype)  # d out / d g = y
            gate, up = gate_up[a:b].chunk(2, dim=-1)
            sig = torch.sigmoid(gate)
            silu = gate * sig
            w = w_sorted[a:b]
            if need_down:
                grad_down[e] = g_rows.t() @ (silu * up * w)  # (H, I)
            grad_h = (g_rows @ down_proj[e]) * w  # (n_e, I): gradient at the SwiGLU product
            grad_gate_up = torch.cat([grad_h * up * sig * (1 + gate * (1 - sig)), grad_h * silu], dim=-1)  # (n_e, 2I)
            if need_gu:
                grad_gu[e] = grad_gate_up.t() @ x.index_select(0, token_of[a:b])  # (2I, H)
            if need_x:
                torch.mm(grad_gate_up, gate_up_proj[e], out=grad_x_sorted[a:b])
        grad_x = F.embedding_bag(positions, grad_x_sorted, mode="sum") if need_x else None  # (T, H)
        grad_w = None
        if need_w:
            grad_w = torch.empty_like(grad_w_sorted)
            grad_w[order] = grad_w_sorted
            grad_w = grad_w.view(T, k)
        return grad_x, grad_w, grad_gu, grad_down, None, None, None


_WORKSPACES = threading.local()  # per thread: {name: tensor}, buffers reused by inference-mode forwards


def _workspace(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer of ``shape`` that the next call with this name may overwrite.

    Only for forwards that keep nothing for a backward (no grad). A fresh buffer
    of tens of MB costs more to fault in page by page than the data movement it
    holds (the allocator returns large blocks to the OS on every free), so the
    expert outputs of the sorted path live in one buffer per thread, shared by
    all layers, grown when needed.
    """
    store = _WORKSPACES.__dict__
    numel = math.prod(shape)
    buf = store.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
        buf = store[name] = like.new_empty(numel)
    return buf[:numel].view(shape)


def _segments(sizes: Sequence[int]):
    """(expert, (start, end)) of each non-empty segment of the expert-sorted rows."""
    start = 0
    for e, n in enumerate(sizes):
        if n:
            yield e, (start, start + n)
        start += n


def dispatch_sorted(experts: RoutedExperts, x: torch.Tensor, weights: torch.Tensor,
                    indices: torch.Tensor) -> torch.Tensor:
    """Sorted dispatch: slots sorted by expert, each expert on its segment, one fused weighted combine."""
    if indices.numel() == 0:
        return torch.zeros_like(x)
    order, counts = sort_by_expert(indices, experts.num_experts)  # (T*k,), (E,)
    inference = not torch.is_grad_enabled()  # nothing is saved for a backward: reuse the big buffers
    return GroupedSwiGLU.apply(x, weights, experts.gate_up_proj, experts.down_proj, order, counts.tolist(), inference)


DISPATCH_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {"loop": dispatch_loop, "sorted": dispatch_sorted}


def get_dispatch(name: str) -> Callable[..., torch.Tensor]:
    """The dispatch function called ``name``; ValueError for unknown names, NotImplementedError for planned ones.

    A new strategy (the Triton grouped GEMM) registers itself in
    ``DISPATCH_FUNCTIONS`` with the signature of :func:`dispatch_sorted`.
    """
    if name in DISPATCH_FUNCTIONS:
        return DISPATCH_FUNCTIONS[name]
    available = ", ".join(DISPATCH_FUNCTIONS)
    if name in PLANNED_DISPATCHES:
        raise NotImplementedError(f"dispatch={name!r} ({PLANNED_DISPATCHES[name]}) is not available yet; "
                                  f"use one of {available}")
    raise ValueError(f"dispatch={name!r} is invalid: use one of {available}")


__all__ = ["RoutedExperts", "swiglu", "dispatch_loop", "dispatch_sorted", "sort_by_expert", "GroupedSwiGLU",
           "get_dispatch", "DISPATCH_FUNCTIONS", "PLANNED_DISPATCHES"]
