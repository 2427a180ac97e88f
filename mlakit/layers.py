"""Building blocks shared by every model: RMSNorm, rotary embedding, SwiGLU.

RMSNorm runs through the kernel registry (:mod:`mlakit.kernels`), so a Triton
kernel replaces its torch reference where one can run.

Rotary embedding (RoFormer, arXiv 2104.09864) rotates pairs of dimensions by an
angle proportional to the position, so the dot product of a rotated query and a
rotated key depends only on their distance. Two conventions exist and both are
here, selected by ``interleave``:

- ``interleave=True``: adjacent pairs (x0, x1), (x2, x3), ... as in DeepSeek's
  released code and transformers' ``rope_interleave=True``;
- ``interleave=False``: halves (x_i, x_{i+d/2}) as in GPT-NeoX and Llama.

YaRN (arXiv 2309.00071), which DeepSeek-V2/V3 use to stretch a 4k pretraining
context to 128k, interpolates the low frequencies, keeps the high ones, blends
between them with a linear ramp, and scales cos/sin by an attention factor.
:func:`yarn_mscale` gives the factor DeepSeek also folds into the softmax scale
(REFERENCE: scale = 192^-0.5 x mscale^2 = 0.13523 for V3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 (Zhang & Sennrich 2019).

    The computation is the kernel op :func:`mlakit.kernels.rmsnorm`; ``backend``
    ("torch", "triton" or "auto") picks its implementation, per module or per call.
    """

    kernel_ops = ("rmsnorm",)

    def __init__(self, dim: int, eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        self.eps = eps
        self.backend = kernels.check_backend(backend)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        return kernels.rmsnorm(x, self.weight, self.eps, backend or self.backend)


class SwiGLU(nn.Module):
    """The gated FFN of Llama and DeepSeek: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# ------------------------------------------------------------------- YaRN math
def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1)."""
    if factor <= 1:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def _yarn_correction_dim(num_rotations: float, dim: int, base: float, max_pos: int) -> float:
    """The dimension index whose wavelength completes `num_rotations` turns over `max_pos`."""
    return (dim * math.log(max_pos / (num_rotations * 2 * math.pi))) / (2 * math.log(base))


def rope_inv_freq(dim: int, base: float, rope_scaling: dict | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (dim/2,) and the cos/sin attention factor.

    Without scaling: inv_freq_i = base^(-2i/dim), factor 1. With YaRN the same
    frequencies are blended with their interpolated version (divided by the
    stretch factor) along a linear ramp between the correction dimensions of
    ``beta_fast`` and ``beta_slow`` rotations.
    """
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    inv_freq = 1.0 / pos_freqs
    if rope_scaling is None:
        return inv_freq.float(), 1.0
    factor = float(rope_scaling["factor"])
    orig = int(rope_scaling.get("original_max_position_embeddings", 4096))
    beta_fast = float(rope_scaling.get("beta_fast") or 32)
    beta_slow = float(rope_scaling.get("beta_slow") or 1)
    mscale, mscale_all_dim = rope_scaling.get("mscale"), rope_scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor)
    low = max(math.floor(_yarn_correction_dim(beta_fast, dim, base, orig)), 0)
    high = min(math.ceil(_yarn_correction_dim(beta_slow, dim, base, orig)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)  # (dim/2,)
    extrapolate = 1 - ramp  # 1: keep the original frequency (fast dims), 0: interpolate (slow dims)
    inv_freq = inv_freq / factor * (1 - extrapolate) + inv_freq * extrapolate
    return inv_freq.float(), float(attention_factor)


def softmax_scale(qk_head_dim: int, rope_scaling: dict | None = None) -> float:
    """1/sqrt(d_qk), times mscale^2 when YaRN is configured with mscale_all_dim (DeepSeek-V2/V3)."""
    scale = qk_head_dim ** -0.5
    if rope_scaling is not None and rope_scaling.get("mscale_all_dim"):
        m = yarn_mscale(float(rope_scaling["factor"]), float(rope_scaling["mscale_all_dim"]))
        scale = scale * m * m
    return scale


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for ``dim`` channels, either convention, optional YaRN.

    ``rope(x, positions)`` rotates x of shape (..., T, dim) at integer positions (T,)
    or (B, T); heads may sit anywhere in the leading dimensions as long as T is
    second to last.
    """

    def __init__(self, dim: int, base: float = 10000.0, interleave: bool = True,
                 rope_scaling: dict | None = None):
        super().__init__()
        if dim % 2:
            raise ValueError(f"RotaryEmbedding dim={dim} is invalid: must be even (pairs are rotated)")
        self.dim, self.interleave = dim, interleave
        inv_freq, self.attention_factor = rope_inv_freq(dim, base, rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (dim/2,)
        self._positions, self._cos_sin = None, None  # the last positions and their cos / sin

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles, each (..., T, dim/2), times the attention factor."""
        angles = positions.to(torch.float32)[..., None] * self.inv_freq  # (..., T, dim/2)
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if positions is self._positions:  # MLA rotates its query and its key at the same positions
            cos, sin = self._cos_sin
        else:
            cos, sin = self.cos_sin(positions)
            self._positions, self._cos_sin = positions, (cos, sin)  # holding it keeps its id from being reused
        if positions.dim() == 2 and x.dim() == 4:  # (B, T) positions against (B, H, T, d)
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, dim/2)
        return apply_rotary(x, cos.to(x.dtype), sin.to(x.dtype), self.interleave)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate pairs of x (..., dim) by the angles whose cos/sin are (..., dim/2)."""
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., dim/2) each: adjacent pairs
    else:
        x1, x2 = x.chunk(2, dim=-1)  # (..., dim/2) each: first and second half
    r1 = x1 * cos - x2 * sin
    r2 = x1 * sin + x2 * cos
    if interleave:
        return torch.stack((r1, r2), dim=-1).flatten(-2)  # (..., dim/2, 2) -> (..., dim)
    return torch.cat((r1, r2), dim=-1)  # (..., dim)
