"""The routed experts of an MoE layer as one op: every token through its k experts, gate-weighted.

    out[t] = sum_j weights[t, j] * SwiGLU_{indices[t, j]}(x[t])

with the stacked weights of :class:`mlakit.moe.RoutedExperts`: x (T, H),
weights (T, k) gate weights, indices (T, k) int64 expert ids in [0, E),
``gate_up_proj`` (E, 2I, H) (expert e's gate rows, then its up rows) and
``down_proj`` (E, H, I) -> (T, H) in the dtype of x. This is the "fused MoE"
of inference servers (DeepSeek-V3 §2.1.2, arXiv 2412.19437; the expert
computation of transformers' DeepseekV3MoE).

The torch backend has two strategies (``dispatch=``), equal in outputs and
gradients, which lesson 05 builds by hand:

- ``"loop"`` (:func:`moe_experts_loop`): the readable reference: for each
  expert gather its tokens, run it, scatter the weighted result back;
- ``"sorted"`` (:func:`moe_experts_sorted`, the default): sort the (token, k)
  slots by expert with a stable argsort, run each expert on its contiguous
  segment and combine with one fused weighted gather-sum
  (:class:`GroupedSwiGLU`, forward and backward written out): no atomics, so
  results are bitwise reproducible.

The Triton backend (:mod:`mlakit.kernels.moe_experts_triton`, imported on
its first call; lesson 12) is the fused MoE of inference servers: align the
slots per expert in blocks, then two grouped GEMMs (gate/up with SiLU-and-mul,
down with the routing weight). It implements the sorted strategy, forward
only: "auto" takes the torch backend when autograd needs gradients, and
"loop" always runs on the torch backend. :func:`fused_moe` is the same op
with the argument order of vLLM's ``fused_experts`` (x, the two weight
stacks, then the routing), for readers coming from there.

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
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .registry import check_backend, get, needs_grad, register, resolve

DISPATCHES = ("loop", "sorted")  # the strategies of the torch backend


def swiglu(x: torch.Tensor, gate_up_w: torch.Tensor, down_w: torch.Tensor) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)), the formula of :class:`mlakit.layers.SwiGLU`, with gate and up fused.

    ``gate_up_w`` (2I, H) holds the gate rows first, then the up rows; ``down_w`` is (H, I).
    """
    gate, up = F.linear(x, gate_up_w).chunk(2, dim=-1)  # (n, 2I) -> (n, I), (n, I)
    return F.linear(F.silu(gate) * up, down_w)


def moe_experts_loop(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, gate_up_proj: torch.Tensor,
                     down_proj: torch.Tensor) -> torch.Tensor:
    """Reference dispatch: per expert, gather its tokens, run it, add the weighted result back.

    ``unbind`` rather than indexing in a loop: its backward stacks the E
    gradients once instead of building a full-size zero tensor per expert.
    """
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # (T, H) accumulated in float32
    for e, (gate_up_w, down_w) in enumerate(zip(gate_up_proj.unbind(0), down_proj.unbind(0), strict=True)):
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
    grouped GEMM replaces exactly this function (the triton backend of ``moe_experts``).
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
    if (buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device
            or buf.is_inference() != torch.is_inference_mode_enabled()):  # inference tensors stay in inference mode
        buf = store[name] = like.new_empty(numel)
    return buf[:numel].view(shape)


def _segments(sizes: Sequence[int]):
    """(expert, (start, end)) of each non-empty segment of the expert-sorted rows."""
    start = 0
    for e, n in enumerate(sizes):
        if n:
            yield e, (start, start + n)
        start += n


def moe_experts_sorted(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, gate_up_proj: torch.Tensor,
                       down_proj: torch.Tensor) -> torch.Tensor:
    """Sorted dispatch: slots sorted by expert, each expert on its segment, one fused weighted combine."""
    if indices.numel() == 0:
        return torch.zeros_like(x)
    order, counts = sort_by_expert(indices, gate_up_proj.shape[0])  # (T*k,), (E,)
    inference = not torch.is_grad_enabled()  # nothing is saved for a backward: reuse the big buffers
    return GroupedSwiGLU.apply(x, weights, gate_up_proj, down_proj, order, counts.tolist(), inference)


def check_dispatch(dispatch: str) -> str:
    """``dispatch`` if it is a strategy of the torch backend ("loop" or "sorted"); ValueError otherwise."""
    if dispatch in DISPATCHES:
        return dispatch
    hint = " (Triton is a backend now: backend='triton')" if dispatch == "triton" else ""
    raise ValueError(f"dispatch={dispatch!r} is invalid: use one of {', '.join(DISPATCHES)}{hint}")


@register("moe_experts", "torch")
def moe_experts_torch(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, gate_up_proj: torch.Tensor,
                      down_proj: torch.Tensor, dispatch: str = "sorted") -> torch.Tensor:
    """The torch backend: :func:`moe_experts_loop` or :func:`moe_experts_sorted`."""
    if check_dispatch(dispatch) == "loop":
        return moe_experts_loop(x, weights, indices, gate_up_proj, down_proj)
    return moe_experts_sorted(x, weights, indices, gate_up_proj, down_proj)


@register("moe_experts", "triton")
def moe_experts_triton(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, gate_up_proj: torch.Tensor,
                       down_proj: torch.Tensor) -> torch.Tensor:
    """The fused MoE Triton kernels (forward only); triton is imported on the first call."""
    from .moe_experts_triton import moe_experts_triton as kernel

    return kernel(x, weights, indices, gate_up_proj, down_proj)


def moe_experts(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, gate_up_proj: torch.Tensor,
                down_proj: torch.Tensor, backend: str = "auto", dispatch: str = "sorted") -> torch.Tensor:
    """sum_j weights[t, j] * expert_{indices[t, j]}(x[t]) for x (T, H): (T, H), on ``backend``.

    Shapes in the module docstring. ``dispatch`` picks the torch backend's
    strategy; "loop" runs on the torch backend whatever "auto" would pick, and
    a Triton kernel implements "sorted".
    """
    check_dispatch(dispatch)
    check_backend(backend)
    if dispatch == "loop":
        if backend == "triton":
            raise ValueError("dispatch='loop' is the torch reference strategy: use backend='torch' (or 'auto') "
                             "with it, or dispatch='sorted' with backend='triton'")
        backend = "torch"
    E, two_I, H = gate_up_proj.shape
    if x.shape[-1] != H or down_proj.shape != (E, H, two_I // 2) or weights.shape != indices.shape:
        raise ValueError(f"moe_experts shapes disagree: x {tuple(x.shape)}, weights {tuple(weights.shape)}, "
                         f"indices {tuple(indices.shape)}, gate_up_proj {tuple(gate_up_proj.shape)} (E, 2I, H), "
                         f"down_proj {tuple(down_proj.shape)} (E, H, I)")
    if backend == "auto" and needs_grad(x, weights, gate_up_proj, down_proj):
        backend = "torch"  # the Triton kernel is forward-only
    backend = resolve("moe_experts", backend, x.device)
    fn = get("moe_experts", backend, x.device)
    if backend == "torch":
        return fn(x, weights, indices, gate_up_proj, down_proj, dispatch=dispatch)
    return fn(x, weights, indices, gate_up_proj, down_proj)


def fused_moe(x: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor, topk_ids: torch.Tensor,
              topk_weights: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """:func:`moe_experts` with vLLM's argument order: (T, H) = sum_j topk_weights[t, j] * SwiGLU_{topk_ids[t, j]}(x[t]).

    x (T, H), gate_up_proj (E, 2I, H) gate rows first, down_proj (E, H, I),
    topk_ids and topk_weights (T, k). The same op and the same kernels (the
    sorted strategy on the torch backend), one name per reader.
    """
    return moe_experts(x, topk_weights, topk_ids, gate_up_proj, down_proj, backend=backend)


__all__ = ["moe_experts", "fused_moe", "moe_experts_triton", "moe_experts_torch", "moe_experts_loop", "moe_experts_sorted", "check_dispatch",
           "swiglu", "sort_by_expert", "GroupedSwiGLU", "DISPATCHES"]
