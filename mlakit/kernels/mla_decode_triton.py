"""MLA decode in Triton: flash-decoding over the latent cache, in two stages (split-KV).

The Triton backend of :func:`mlakit.kernels.mla_decode` (formula and shapes
there), imported on its first call: importing this module imports triton and
defines the kernels; to run them on CPU tensors, ``TRITON_INTERPRET=1`` must
be set before triton is first imported.

Stage 1, grid (B, head blocks, splits): a program takes BLOCK_H query heads
of one sequence (they all read the same latent rows: MLA's absorbed decode is
multi-query attention with one 576-wide KV head, so a block of heads turns
the scores into a small matrix product) and one split of that sequence's
rows, [s * chunk, min((s + 1) * chunk, length)). It walks the split BLOCK_N
rows at a time with the online softmax (running max m, running sum l, the
accumulator rescaled by exp(m_old - m_new)) and writes its normalised partial
output o_s = acc / l and its log-sum-exp lse_s = m + log(l). A split past the
sequence's length is empty: it writes lse = -inf and zeros.

Stage 2, grid (B, n_h) (under the interpreter, a block of heads per program): the splits are merged by log-sum-exp,
out = sum_s exp(lse_s - LSE) o_s with LSE = logsumexp_s lse_s; a sequence with
no rows gets zeros (every lse is -inf), as in the reference.

The scores use exp2 with the scale folded into log2(e) * scale (one multiply
per score, the cheap exponential). The key is split into its latent part
(d_c wide, which is also the value) and its rope part (d_rope wide), two
products summed, so 512 + 64 is padded to 512 + 64, not to 1024.

On a GPU, bf16 / fp16 scores and the p @ V product run on tensor cores with
fp32 accumulation. Triton's interpreter computes ``tl.dot`` on bf16 inputs
wrongly, so when interpreting the operands are upcast to fp32 in the kernel
(``UPCAST``); the results are then at least as exact as the GPU's.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .registry import check_triton_launch, triton_interpret

LOG2E = 1.4426950408889634


DEFINED_INTERPRETED = triton_interpret()  # triton.jit below reads TRITON_INTERPRET now, once


@triton.jit
def _mla_decode_split(Q, KV, LENS, O, LSE, scale_log2, chunk,
                      stride_qb, stride_qh, stride_kb, stride_kn, stride_ob, stride_oh, stride_os,
                      stride_lb, stride_lh, n_heads, d_c, d_rope,
                      BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
                      UPCAST: tl.constexpr):
    b = tl.program_id(0)
    hb = tl.program_id(1)
    s = tl.program_id(2)
    length = tl.load(LENS + b).to(tl.int32)
    start = s * chunk
    end = tl.minimum(start + chunk, length)

    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = heads < n_heads
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < d_c
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < d_rope
    q_row = Q + b * stride_qb + heads[:, None] * stride_qh
    q_c = tl.load(q_row + offs_c[None, :], mask=h_mask[:, None] & c_mask[None, :], other=0.0)  # (BH, BC)
    q_r = tl.load(q_row + d_c + offs_r[None, :], mask=h_mask[:, None] & r_mask[None, :], other=0.0)  # (BH, BR)
    if UPCAST:
        q_c = q_c.to(tl.float32)
        q_r = q_r.to(tl.float32)

    m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)  # running max, in log2 units
    den = tl.zeros([BLOCK_H], dtype=tl.float32)  # running sum of exp2(score - m)
    acc = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
    kv_seq = KV + b * stride_kb
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        kv_row = kv_seq + offs_n[:, None] * stride_kn
        k_c = tl.load(kv_row + offs_c[None, :], mask=n_mask[:, None] & c_mask[None, :], other=0.0)  # (BN, BC)
        k_r = tl.load(kv_row + d_c + offs_r[None, :], mask=n_mask[:, None] & r_mask[None, :], other=0.0)
        if UPCAST:
            k_c = k_c.to(tl.float32)
            k_r = k_r.to(tl.float32)
        scores = tl.dot(q_c, tl.trans(k_c)) + tl.dot(q_r, tl.trans(k_r))  # (BH, BN), fp32
        scores = tl.where(n_mask[None, :], scores * scale_log2, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))  # finite: every block holds at least one row
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(scores - m_new[:, None])
        den = den * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(k_c.dtype), k_c)  # the latent is the value
        m = m_new

    empty = den == 0.0  # a split with no rows: zeros and lse = -inf
    o = acc / tl.where(empty, 1.0, den)[:, None]
    lse = tl.where(empty, float("-inf"), m + tl.log2(tl.where(empty, 1.0, den)))
    o_ptr = O + b * stride_ob + heads[:, None] * stride_oh + s * stride_os + offs_c[None, :]
    tl.store(o_ptr, o, mask=h_mask[:, None] & c_mask[None, :])
    tl.store(LSE + b * stride_lb + heads * stride_lh + s, lse, mask=h_mask)


@triton.jit
def _mla_decode_merge(O, LSE, OUT, n_heads, n_splits, d_c, stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
                      stride_outb, stride_outh, HEADS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    heads = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
    h_mask = heads < n_heads
    offs_s = tl.arange(0, BLOCK_S)
    s_mask = offs_s < n_splits
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < d_c
    hs_mask = h_mask[:, None] & s_mask[None, :]
    lse = tl.load(LSE + b * stride_lb + heads[:, None] * stride_lh + offs_s[None, :], mask=hs_mask,
                  other=float("-inf"))  # (HEADS, BS)
    top = tl.max(lse, axis=1)
    top = tl.where(top == float("-inf"), 0.0, top)  # no rows at all: every weight is exp2(-inf) = 0
    w = tl.exp2(lse - top[:, None])  # (HEADS, BS), log2 units as in stage 1
    total = tl.sum(w, axis=1)
    o_ptr = O + b * stride_ob + heads[:, None, None] * stride_oh + offs_s[None, :, None] * stride_os \
        + offs_c[None, None, :]
    o = tl.load(o_ptr, mask=hs_mask[:, :, None] & c_mask[None, None, :], other=0.0)  # (HEADS, BS, BC)
    out = tl.sum(w[:, :, None] * o, axis=1) / tl.where(total == 0.0, 1.0, total)[:, None]  # (HEADS, BC)
    tl.store(OUT + b * stride_outb + heads[:, None] * stride_outh + offs_c[None, :], out.to(OUT.dtype.element_ty),
             mask=h_mask[:, None] & c_mask[None, :])


def launch_config(n_heads: int, interpret: bool) -> dict:
    """Block sizes and warps. The interpreter costs per program and per loop step, not per element,
    so there the blocks are as large as the problem allows; on a GPU the accumulator (BLOCK_H x 512
    fp32) must stay in registers: 16 heads and 32 rows per step, 4 warps (as SGLang's grouped MLA decode)."""
    if interpret:
        return {"BLOCK_H": max(16, min(triton.next_power_of_2(n_heads), 128)), "BLOCK_N": 64, "num_warps": 4,
                "num_stages": 1}
    return {"BLOCK_H": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def default_num_splits(batch: int, n_heads: int, s_max: int, block_h: int, block_n: int,
                       device: torch.device) -> int:
    """Enough splits for about two programs per streaming multiprocessor, never fewer rows than a block each.

    The interpreter runs programs one after another: one split there.
    """
    if device.type != "cuda":
        return 1
    sms = _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
    programs = batch * triton.cdiv(n_heads, block_h)
    return max(1, min(triton.cdiv(2 * sms, programs), triton.cdiv(s_max, block_n), 64))


def mla_decode_triton(q: torch.Tensor, latent: torch.Tensor, lengths: torch.Tensor, scale: float,
                      kv_lora_rank: int, num_splits: int | None = None) -> torch.Tensor:
    """(B, n_h, d_c) absorbed MLA decode by the two-stage split-KV kernel (arguments as the reference).

    Forward only: decode runs without autograd. The splits cut the S_max rows into
    ``num_splits`` chunks rounded up to whole blocks (so there may be fewer
    chunks than asked), the reference's merge up to float rounding.
    """
    if torch.is_grad_enabled() and (q.requires_grad or latent.requires_grad):
        raise RuntimeError("mla_decode (triton) is forward-only (decode needs no gradients): call it under "
                           "torch.no_grad() or use backend='torch'")
    check_triton_launch("mla_decode", DEFINED_INTERPRETED, q.device)
    B, n_h, D = q.shape
    S = latent.shape[1]
    d_c, d_rope = kv_lora_rank, D - kv_lora_rank
    interpret = triton_interpret()
    cfg = launch_config(n_h, interpret)
    block_n = cfg["BLOCK_N"]
    if num_splits is None:
        num_splits = default_num_splits(B, n_h, S, cfg["BLOCK_H"], block_n, q.device)
    chunk = triton.cdiv(max(1, math.ceil(S / num_splits)), block_n) * block_n  # whole blocks per split
    splits = max(1, triton.cdiv(S, chunk))
    out_dtype = torch.result_type(q, latent)
    if q.dtype != latent.dtype:  # one dtype in the products: the cache's
        q = q.to(latent.dtype)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if latent.stride(-1) != 1:
        latent = latent.contiguous()
    lengths = lengths.to(device=q.device, dtype=torch.int32).clamp(0, S)
    o = torch.empty((B, n_h, splits, d_c), dtype=torch.float32, device=q.device)
    lse = torch.empty((B, n_h, splits), dtype=torch.float32, device=q.device)
    out = torch.empty((B, n_h, d_c), dtype=out_dtype, device=q.device)
    if B == 0 or n_h == 0:
        return out
    block_c = max(16, triton.next_power_of_2(d_c))
    block_r = max(16, triton.next_power_of_2(max(d_rope, 1)))
    _mla_decode_split[(B, triton.cdiv(n_h, cfg["BLOCK_H"]), splits)](
        q, latent, lengths, o, lse, scale * LOG2E, chunk,
        q.stride(0), q.stride(1), latent.stride(0), latent.stride(1), o.stride(0), o.stride(1), o.stride(2),
        lse.stride(0), lse.stride(1), n_h, d_c, d_rope,
        BLOCK_H=cfg["BLOCK_H"], BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_R=block_r,
        UPCAST=interpret and latent.dtype != torch.float32, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    heads = min(triton.next_power_of_2(n_h), 128) if interpret else 1  # the interpreter pays per program
    _mla_decode_merge[(B, triton.cdiv(n_h, heads))](
        o, lse, out, n_h, splits, d_c, o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1), HEADS=heads, BLOCK_S=max(2, triton.next_power_of_2(splits)),
        BLOCK_C=block_c, num_warps=4)
    return out


__all__ = ["mla_decode_triton", "launch_config", "default_num_splits"]
