"""RMSNorm forward: y = x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019, arXiv 1910.07467).

The op behind :class:`mlakit.layers.RMSNorm`, used twice per block, on the
MLA latents (``q_a_layernorm``, ``kv_a_layernorm``) and before the head of
DeepSeek-V2/V3. Its torch reference is the formula of transformers'
DeepseekV3RMSNorm: the mean of squares and the scaling in float32, the
normalised x cast back to its dtype, then times the weight (so a float32
weight with bf16 x gives a float32 result, as in transformers). Lesson 12
writes a Triton kernel for it: one program per row, the row in registers,
one read and one write of x, which is what makes it memory-bound and fast.
The library's kernel, forward and backward, is the "triton" backend
(:mod:`mlakit.kernels.rmsnorm_triton`, imported on its first call).
"""

from __future__ import annotations

import torch

from .registry import get, register


@register("rmsnorm", "torch")
def rmsnorm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference: x (..., d) and weight (d,) -> (..., d)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)  # (..., d) float32
    return weight * h.to(dtype)


@register("rmsnorm", "triton")
def rmsnorm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The Triton kernel (forward and backward); triton is imported on the first call."""
    from .rmsnorm_triton import rmsnorm_triton as kernel

    return kernel(x, weight, eps)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str = "auto") -> torch.Tensor:
    """RMSNorm of x (..., d) with ``weight`` (d,) over the last dimension, on ``backend``."""
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"rmsnorm weight has shape {tuple(weight.shape)}; expected ({x.shape[-1]},), "
                         f"the last dimension of x {tuple(x.shape)}")
    return get("rmsnorm", backend, x.device)(x, weight, eps)


__all__ = ["rmsnorm", "rmsnorm_torch", "rmsnorm_triton"]
