"""Fused MoE in Triton: align the slots per expert, then two grouped GEMMs (the vLLM / SGLang recipe).

The Triton backend of :func:`mlakit.kernels.moe_experts` (and of its alias
:func:`mlakit.kernels.fused_moe`), imported on its first call: importing this
module imports triton and defines the kernels; to run them on CPU tensors,
``TRITON_INTERPRET=1`` must be set before triton is first imported. Shapes: x (T, H), gate_up_proj
(E, 2I, H) with the gate rows first, down_proj (E, H, I), topk_ids and
topk_weights (T, k).

1. Align (:func:`align_block_size`, torch ops, no host sync): the T*k slots
   (slot = t * k + j) sorted by expert with a stable argsort, each expert's
   segment padded to a multiple of BLOCK_M with an invalid slot id (T*k), so
   every block of BLOCK_M sorted slots belongs to ONE expert; ``block_expert``
   names it (-1 for the padding blocks past the last expert). The buffer is
   sized for the worst case, T*k + E*(BLOCK_M - 1) rounded up to a block.
2. Grouped GEMM 1 (:func:`_gate_up_silu`): a program takes one block of slots
   and BLOCK_N of the I columns, gathers its tokens' rows of x and multiplies
   them by its expert's gate rows and up rows (two accumulators over H), and
   writes silu(gate) * up into ``act`` (T*k, I) at the slots' own rows.
3. Grouped GEMM 2 (:func:`_down_weighted`): the same blocks times the
   expert's down_proj over I, scaled by the slot's routing weight, written to
   ``y`` (T*k, H) at the slots' rows.
4. Sum over k: ``y.view(T, k, H).sum(1)`` in float32, cast to x's dtype.

Experts without tokens cost nothing (no block names them). Every slot is
written by exactly one program (no atomics), so results are reproducible.
Forward only: the Triton backend serves inference; training on a GPU takes
the torch backend ("auto" does so when autograd needs gradients).

Triton's interpreter computes ``tl.dot`` on bf16 inputs wrongly, so when
interpreting the operands are upcast to fp32 in the kernel (``UPCAST``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .registry import check_triton_launch, triton_interpret

DEFINED_INTERPRETED = triton_interpret()  # triton.jit below reads TRITON_INTERPRET now, once


@triton.jit
def _gate_up_silu(X, W, SORTED, BLOCK_EXPERT, ACT, n_slots, top_k, inter, hidden,
                  stride_xt, stride_we, stride_wn, stride_act,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(BLOCK_EXPERT + pid_m)
    if expert < 0:
        return  # a padding block past the last expert
    slots = tl.load(SORTED + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))  # (BM,) slot ids, n_slots = padding
    m_mask = slots < n_slots
    tokens = tl.where(m_mask, slots // top_k, 0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < inter
    offs_k = tl.arange(0, BLOCK_K)
    x_ptr = X + tokens[:, None] * stride_xt + offs_k[None, :]  # (BM, BK)
    w_base = W + expert.to(tl.int64) * stride_we + offs_k[:, None]
    g_ptr = w_base + offs_n[None, :] * stride_wn  # (BK, BN): gate rows n
    u_ptr = w_base + (offs_n[None, :] + inter) * stride_wn  # up rows I + n
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k_mask = offs_k < hidden - k0
        a = tl.load(x_ptr, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        g = tl.load(g_ptr, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        u = tl.load(u_ptr, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            g = g.to(tl.float32)
            u = u.to(tl.float32)
        acc_g += tl.dot(a, g)
        acc_u += tl.dot(a, u)
        x_ptr += BLOCK_K
        g_ptr += BLOCK_K
        u_ptr += BLOCK_K
    act = acc_g * tl.sigmoid(acc_g) * acc_u  # silu(gate) * up, in fp32
    out_ptr = ACT + slots[:, None].to(tl.int64) * stride_act + offs_n[None, :]
    tl.store(out_ptr, act.to(ACT.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _down_weighted(ACT, W, SORTED, BLOCK_EXPERT, TOPK_W, Y, n_slots, inter, hidden,
                   stride_act, stride_we, stride_wn, stride_y,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(BLOCK_EXPERT + pid_m)
    if expert < 0:
        return
    slots = tl.load(SORTED + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    m_mask = slots < n_slots
    rows = tl.where(m_mask, slots, 0).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output columns, over H
    n_mask = offs_n < hidden
    offs_k = tl.arange(0, BLOCK_K)  # over I
    a_ptr = ACT + rows[:, None] * stride_act + offs_k[None, :]
    w_ptr = W + expert.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]  # (BK, BN)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        k_mask = offs_k < inter - k0
        a = tl.load(a_ptr, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(a, w)
        a_ptr += BLOCK_K
        w_ptr += BLOCK_K
    weight = tl.load(TOPK_W + rows, mask=m_mask, other=0.0).to(tl.float32)  # the slot's routing weight
    acc = acc * weight[:, None]
    tl.store(Y + rows[:, None] * stride_y + offs_n[None, :], acc.to(Y.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``sorted_slots`` (num_blocks * block_m,) and ``block_expert`` (num_blocks,): the align step.

    ``sorted_slots`` lists the slots expert by expert (stable: token order within
    an expert), each expert's run padded with the invalid id T*k to a multiple of
    ``block_m``; ``block_expert[i]`` is the expert of block i, -1 for the blocks
    past the last expert's run (the buffer is sized for the worst case, so the
    GPU never waits for a count). Plain torch ops, on the ids' device.
    """
    flat = topk_ids.reshape(-1)
    n = flat.numel()
    device = flat.device
    order = torch.argsort(flat, stable=True)  # (n,)
    counts = torch.bincount(flat, minlength=num_experts)  # (E,)
    padded = (counts + block_m - 1) // block_m * block_m  # (E,)
    padded_end = torch.cumsum(padded, 0)  # (E,) inclusive
    start = torch.cumsum(counts, 0) - counts  # (E,) first sorted position of each expert
    expert_sorted = flat[order]
    dest = (padded_end - padded)[expert_sorted] + torch.arange(n, device=device) - start[expert_sorted]
    num_blocks = triton.cdiv(n + num_experts * (block_m - 1), block_m)
    sorted_slots = torch.full((num_blocks * block_m,), n, dtype=torch.int32, device=device)
    sorted_slots[dest] = order.to(torch.int32)
    block_start = torch.arange(num_blocks, device=device) * block_m
    block_expert = torch.searchsorted(padded_end, block_start, right=True)  # first expert whose run ends later
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return sorted_slots, block_expert


def launch_config(num_slots: int, num_experts: int, interpret: bool) -> dict:
    """Block sizes. The interpreter pays per program and per loop step: large N and K blocks there.
    On a GPU, vLLM's untuned defaults: 16-row blocks when the slots per expert are few (decode), else 64."""
    if interpret:
        return {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 1}
    block_m = 16 if num_slots <= 4 * num_experts else 64
    return {"BLOCK_M": block_m, "BLOCK_N": 64, "BLOCK_K": 64 if block_m == 16 else 32, "num_warps": 4,
            "num_stages": 3}


def moe_experts_triton(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, gate_up_proj: torch.Tensor,
                       down_proj: torch.Tensor) -> torch.Tensor:
    """sum_j weights[t, j] * expert_{indices[t, j]}(x[t]), (T, H), by the fused MoE kernels (forward only)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, weights, gate_up_proj, down_proj)):
        raise RuntimeError("moe_experts (triton) is forward-only: call it under torch.no_grad() or use "
                           "backend='torch' (what 'auto' picks when gradients are needed)")
    check_triton_launch("moe_experts", DEFINED_INTERPRETED, x.device)
    T, H = x.shape
    E, two_i, _ = gate_up_proj.shape
    inter = two_i // 2
    k = indices.shape[1]
    n_slots = T * k
    if n_slots == 0:
        return torch.zeros_like(x)
    interpret = triton_interpret()
    cfg = launch_config(n_slots, E, interpret)
    upcast = interpret and x.dtype != torch.float32
    x = x.contiguous()
    gate_up_proj, down_proj = gate_up_proj.to(x.dtype).contiguous(), down_proj.to(x.dtype).contiguous()
    topk_w = weights.reshape(-1).float().contiguous()  # (T*k,) one weight per slot
    sorted_slots, block_expert = align_block_size(indices, E, cfg["BLOCK_M"])
    num_blocks = block_expert.numel()
    act = torch.empty((n_slots, inter), dtype=x.dtype, device=x.device)
    y = torch.empty((n_slots, H), dtype=x.dtype, device=x.device)
    common = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"], "UPCAST": upcast,
              "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    _gate_up_silu[(num_blocks, triton.cdiv(inter, cfg["BLOCK_N"]))](
        x, gate_up_proj, sorted_slots, block_expert, act, n_slots, k, inter, H,
        x.stride(0), gate_up_proj.stride(0), gate_up_proj.stride(1), act.stride(0), **common)
    _down_weighted[(num_blocks, triton.cdiv(H, cfg["BLOCK_N"]))](
        act, down_proj, sorted_slots, block_expert, topk_w, y, n_slots, inter, H,
        act.stride(0), down_proj.stride(0), down_proj.stride(1), y.stride(0), **common)
    return y.view(T, k, H).sum(1, dtype=torch.float32).to(x.dtype)


__all__ = ["moe_experts_triton", "align_block_size", "launch_config"]
