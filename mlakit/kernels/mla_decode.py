"""MLA decode attention over the latent cache: one query token per sequence, absorbed weights.

In the absorbed path of Multi-Head Latent Attention (DeepSeek-V2 §2.1.2-2.1.3,
arXiv 2405.04434; :mod:`mlakit.mla`) W_UK is folded into the query and W_UV
applied after the sum, so every head attends over the same cached rows
[c_KV ; k_R] (MQA with one wide shared KV head) and the value is the latent
itself. For one new token per sequence:

    out[b, h] = softmax_s(q[b, h] . latent[b, s] * scale) @ latent[b, s, :d_c],   s < lengths[b]

- ``q`` (B, n_h, d_c + d_rope): the absorbed query [q_C W_UK ; q_R];
- ``latent`` (B, S_max, d_c + d_rope): the cache, rows [0, lengths[b]) valid;
- ``lengths`` (B,) integers; ``kv_lora_rank`` = d_c, ``scale`` the softmax scale.

Returns (B, n_h, d_c) in the inputs' dtype; W_UV and o_proj stay with the caller.

``num_splits`` (split-KV, "flash-decoding"): one query row leaves a GPU idle,
so kernels split the S_max keys into chunks, compute each chunk's normalised
partial output o_i and log-sum-exp lse_i in parallel, then merge them:
out = sum_i exp(lse_i - LSE) o_i with LSE = logsumexp_i lse_i. The torch
reference emulates exactly that merge when ``num_splits`` is given (equal to
the single softmax up to float rounding), so a kernel's two stages can be
checked one by one; None is one chunk. A sequence with no valid rows
(length 0) gets zeros, FlashAttention's convention for an empty key set.
Rows at or past a sequence's length are never read (a preallocated cache
holds garbage there). Computed in float32.

The "triton" backend (:mod:`mlakit.kernels.mla_decode_triton`, imported on
its first call) is the two-stage flash-decoding kernel; it is forward-only,
so "auto" takes the torch reference when autograd needs gradients.
"""

from __future__ import annotations

import math

import torch

from .registry import check_backend, get, needs_grad, register, resolve


def _check(q: torch.Tensor, latent: torch.Tensor, lengths: torch.Tensor, kv_lora_rank: int,
           num_splits: int | None) -> None:
    if q.dim() != 3 or latent.dim() != 3:
        raise ValueError(f"mla_decode expects q (B, n_h, D) and latent (B, S, D); got {tuple(q.shape)} and "
                         f"{tuple(latent.shape)}")
    if latent.shape[0] != q.shape[0] or latent.shape[-1] != q.shape[-1]:
        raise ValueError(f"mla_decode: q {tuple(q.shape)} and latent {tuple(latent.shape)} must share the batch "
                         "and the last dimension d_c + d_rope (is q absorbed, [q_C W_UK ; q_R]?)")
    if lengths.shape != (q.shape[0],) or lengths.is_floating_point():
        raise ValueError(f"mla_decode lengths must be integers of shape ({q.shape[0]},); got "
                         f"{lengths.dtype} {tuple(lengths.shape)}")
    if not 0 < kv_lora_rank <= q.shape[-1]:
        raise ValueError(f"mla_decode kv_lora_rank={kv_lora_rank} must be in [1, {q.shape[-1]}] (the latent width d_c)")
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"mla_decode num_splits={num_splits} must be >= 1 (or None: one split)")


@register("mla_decode", "torch")
def mla_decode_torch(q: torch.Tensor, latent: torch.Tensor, lengths: torch.Tensor, scale: float,
                     kv_lora_rank: int, num_splits: int | None = None) -> torch.Tensor:
    """The reference, split-KV merge emulated when ``num_splits`` is given (see the module docstring)."""
    S = latent.shape[1]
    valid = torch.arange(S, device=latent.device)[None, :] < lengths.to(latent.device)[:, None]  # (B, S)
    # rows past a length may hold garbage (even NaN): zero them, as a kernel's masked loads would
    k = latent.float().masked_fill(~valid[..., None], 0.0)  # (B, S, d_c + d_rope): every head's key
    v = k[..., :kv_lora_rank]  # (B, S, d_c): the latent is the value
    scores = torch.matmul(q.float(), k.transpose(1, 2)) * scale  # (B, n_h, S)
    scores = scores.masked_fill(~valid[:, None], float("-inf"))
    chunk = max(1, math.ceil(S / (num_splits or 1)))
    outs, lses = [], []
    for start in range(0, max(S, 1), chunk):  # stage 1: each split on its own
        s = scores[..., start:start + chunk]  # (B, n_h, c)
        m = s.amax(dim=-1, keepdim=True) if s.shape[-1] else s.new_full((*s.shape[:-1], 1), float("-inf"))
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # an empty split: exp(-inf - 0) = 0
        p = torch.exp(s - m_safe)  # (B, n_h, c)
        den = p.sum(dim=-1, keepdim=True)  # (B, n_h, 1)
        outs.append(torch.matmul(p, v[:, start:start + chunk]) / den.clamp_min(torch.finfo(den.dtype).tiny))
        lses.append(m_safe + den.log())  # (B, n_h, 1): -inf for an empty split
    o = torch.stack(outs)  # (splits, B, n_h, d_c)
    lse = torch.stack(lses)  # (splits, B, n_h, 1)
    total = torch.logsumexp(lse, dim=0)  # stage 2: (B, n_h, 1)
    total = torch.where(torch.isfinite(total), total, torch.zeros_like(total))  # no valid row at all: zeros
    out = (torch.exp(lse - total) * o).sum(dim=0)  # (B, n_h, d_c)
    return out.to(torch.result_type(q, latent))


@register("mla_decode", "triton")
def mla_decode_triton(q: torch.Tensor, latent: torch.Tensor, lengths: torch.Tensor, scale: float,
                      kv_lora_rank: int, num_splits: int | None = None) -> torch.Tensor:
    """The two-stage split-KV Triton kernel; triton is imported on the first call."""
    from .mla_decode_triton import mla_decode_triton as kernel

    return kernel(q, latent, lengths, scale, kv_lora_rank, num_splits=num_splits)


def mla_decode(q: torch.Tensor, latent: torch.Tensor, lengths: torch.Tensor, scale: float, kv_lora_rank: int,
               backend: str = "auto", num_splits: int | None = None) -> torch.Tensor:
    """Absorbed MLA attention of one query token per sequence over the latent cache, (B, n_h, d_c).

    Shapes and the formula in the module docstring; ``num_splits`` is the
    split-KV chunk count a kernel uses (the torch reference emulates its merge).
    """
    _check(q, latent, lengths, kv_lora_rank, num_splits)
    if check_backend(backend) == "auto" and needs_grad(q, latent):
        backend = "torch"  # the kernel is forward-only
    backend = resolve("mla_decode", backend, q.device)
    return get("mla_decode", backend, q.device)(q, latent, lengths, scale, kv_lora_rank, num_splits=num_splits)


__all__ = ["mla_decode", "mla_decode_torch", "mla_decode_triton"]
