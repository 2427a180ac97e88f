"""Fine-grained FP8 (E4M3) quantisation and a simulated FP8 GEMM, after DeepSeek-V3 §3.3 (arXiv 2412.19437).

What V3 does, and what this module simulates on the CPU:

- **Fine-grained scaling.** Every tensor is cast to E4M3 (4 exponent bits, 3
  mantissa bits, largest finite value 448) with one fp32 scale per tile:
  activations per 1x128 tile (one token, 128 channels), weights per 128x128
  block; ``scale = max|x| / 448`` over the tile, so the tile's largest value
  lands on 448 and an outlier only costs precision to its own tile.
  :func:`quantize` / :func:`dequantize` (any tile shape; per-tensor scaling
  for comparison: :func:`quantize_per_tensor`).
- **Casts.** Done by torch's ``float8_e4m3fn`` on the CPU: round to nearest
  even. That cast saturates at +-448 on the CPU (torch 2.13), but this module
  clamps to +-448 first anyway, so the result does not depend on what a
  backend does with overflow. Subnormals (down to 2^-9) are kept; smaller
  magnitudes round to 0.
- **GEMM.** :func:`fp8_gemm` computes ``a @ b.T`` from the quantised operands
  with one of three accumulators: ``"fp32"`` (an fp32 matmul of the
  dequantised values: what the training simulation uses), ``"narrow"`` (every
  raw E4M3 product added in order to a running sum kept to
  ``accumulator_bits`` significant bits, for the whole K, the scales applied
  at the end) and ``"promoted"`` (the same narrow sum over each chunk of
  ``promote_every`` = N_C = 128 elements, whose result is multiplied by the
  two tiles' scales and added to an fp32 accumulator: V3's promotion to CUDA
  cores). A tensor core cannot apply a scale inside its sum, so ``"narrow"``
  takes only operands with one scale per row along K (per-tensor or
  row-wise scaling); fine-grained tiles need the promotion.
  The products of two E4M3 values are exact (at most 8 significant bits), as
  on the hardware; only the sums are rounded.
- **The narrow accumulator is a model, not the hardware.** V3 reports that
  the H800's FP8 tensor cores keep about 14 bits of the accumulation and that
  the error reached nearly 2% at K = 4096. This module models that as a
  running sum rounded to ``accumulator_bits`` = 14 significant bits (13 after
  the leading one) after every addition, by default toward zero
  (``rounding="truncate"``: low bits dropped as an aligning adder drops them;
  ``"nearest"`` rounds to nearest even instead). The real tensor core adds
  groups of products at once with its own alignment; neither is modelled.
- **Training.** :func:`fp8_training` swaps a model's ``nn.Linear`` layers (but
  not the output head, which V3 keeps in higher precision) and its routed
  experts for versions whose three GEMMs (Fprop, Dgrad, Wgrad) run on
  quantised operands: activations and output gradients per 1x128 tile along
  each GEMM's contraction, weights per 128x128 block, fp32 accumulation. The
  master weights stay fp32 and receive the gradient as computed
  (quantise-dequantise in the forward, no quantisation of the weight update).
  Embedding, norms, attention, the router and the optimizer stay fp32.

What the CPU cannot do: there is no FP8 arithmetic on the CPU (add, mul, sum
and matmul of fp8 tensors are not implemented; ``torch._scaled_mm`` accepts
tensor-wise and row-wise scales but rejects 1x128 / 128x128 block scales). So
every GEMM here is simulated in fp32 or fp64 from dequantised values: the
numbers match FP8's rounding, not its speed or memory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .moe.experts import RoutedExperts

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # largest finite E4M3 value: 1.75 x 2^8
E4M3_MANTISSA_BITS = 3  # explicit mantissa bits: relative rounding error at most 2^-4 = 6.25% for normals
E4M3_MIN_NORMAL = 2.0**-6  # smallest normal E4M3 value; subnormals go down to 2^-9
TILE = 128  # V3's tile width: activations 1 x 128, weights 128 x 128
ACTIVATION_TILE = (1, TILE)
WEIGHT_BLOCK = (TILE, TILE)
PROMOTE_EVERY = 128  # N_C: elements of K accumulated on the tensor core before promotion to fp32 (V3: 4 WGMMAs)
H800_ACCUMULATOR_BITS = 14  # "about 14 bits" kept by H800 FP8 tensor cores in accumulation (V3 §3.3.2)
ROUNDINGS = ("truncate", "nearest")
ACCUMULATORS = ("fp32", "narrow", "promoted")


def _check_tile(name: str, tile) -> tuple[int, int]:
    if (not isinstance(tile, (tuple, list)) or len(tile) != 2
            or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in tile)):
        raise ValueError(f"{name}={tile!r} is invalid: must be two positive integers (rows, columns), "
                         "such as (1, 128) for activations or (128, 128) for weights")
    return int(tile[0]), int(tile[1])


def _check_matrix(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        what = f"a {x.dim()}-D tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D floating-point tensor (rows, columns); got {what}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds inf or NaN; FP8 scaling needs finite values")
    return x


def cast_e4m3(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``float8_e4m3fn``: clamped to +-448 explicitly, then rounded to nearest even by torch's cast."""
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """The nearest E4M3 value of each element (saturating at +-448), as fp32."""
    return cast_e4m3(x).float()


@dataclass
class FP8Tensor:
    """A matrix in E4M3 with one fp32 scale per tile: ``x ~ data.float() * scale`` tile by tile.

    ``data`` (R, C) float8_e4m3fn; ``scale`` (ceil(R / tile[0]), ceil(C / tile[1])) float32;
    ``tile`` the tile shape (the last tiles of a row or column may be smaller).
    """

    data: torch.Tensor
    scale: torch.Tensor
    tile: tuple[int, int]

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def scale_per_element(self) -> torch.Tensor:
        """The scale of each element's tile, (R, C)."""
        R, C = self.data.shape
        return self.scale.repeat_interleave(self.tile[0], 0)[:R].repeat_interleave(self.tile[1], 1)[:, :C]

    def dequantize(self) -> torch.Tensor:
        return dequantize(self)

    def nbytes(self) -> int:
        """Bytes of the E4M3 values plus the fp32 scales."""
        return self.data.numel() * 1 + self.scale.numel() * 4


def tile_amax(x: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """max |x| over each tile of ``x`` (R, C): (ceil(R / tile[0]), ceil(C / tile[1])); the last tiles may be partial."""
    tr, tc = tile
    R, C = x.shape
    nr, nc = math.ceil(R / tr), math.ceil(C / tc)
    padded = F.pad(x.abs().float(), (0, nc * tc - C, 0, nr * tr - R))  # zeros never raise a max of |x|
    return padded.view(nr, tr, nc, tc).amax(dim=(1, 3))  # (nr, nc)


def quantize(x: torch.Tensor, tile=ACTIVATION_TILE) -> FP8Tensor:
    """E4M3 with one scale per tile: ``scale = max|tile| / 448``, ``data = cast(x / scale)``.

    ``tile`` (1, 128) is V3's activation tiling, (128, 128) its weight blocks, ``x.shape``
    per-tensor scaling. A tile of zeros gets scale 1 (and zeros), never 0 / 0.
    """
    tile = _check_tile("tile", tile)
    x = _check_matrix("x", x)
    amax = tile_amax(x, tile)  # (nr, nc)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))  # fp32
    q = FP8Tensor(torch.empty(0), scale, tile)
    q.data = cast_e4m3(x.float() / FP8Tensor(x, scale, tile).scale_per_element())
    return q


def quantize_per_tensor(x: torch.Tensor) -> FP8Tensor:
    """E4M3 with one scale for the whole matrix (the usual FP8 recipe V3's tiles improve on)."""
    x = _check_matrix("x", x)
    return quantize(x, tuple(x.shape))


def dequantize(q: FP8Tensor) -> torch.Tensor:
    """fp32 values ``data * scale`` of a :class:`FP8Tensor`."""
    return q.data.float() * q.scale_per_element()


def fake_quantize(x: torch.Tensor, tile=ACTIVATION_TILE) -> torch.Tensor:
    """``dequantize(quantize(x, tile))``: x on its tiles' E4M3 grids, fp32."""
    return dequantize(quantize(x, tile))


def _fake_quantize_fast(x: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """:func:`fake_quantize` without the checks, in one padded view (the training path; tests compare the two)."""
    R, C = x.shape
    tr, tc = min(tile[0], R), min(tile[1], C)
    nr, nc = -(-R // tr), -(-C // tc)
    padded = x.float().contiguous()
    if nr * tr != R or nc * tc != C:
        padded = F.pad(padded, (0, nc * tc - C, 0, nr * tr - R))
    if tr == 1:  # rows of tiles: reduce the contiguous last axis only
        padded = padded.view(nr, nc, tc)
        amax = padded.abs().amax(dim=-1, keepdim=True)  # (nr, nc, 1)
    else:
        padded = padded.view(nr, tr, nc, tc)
        amax = padded.abs().amax(dim=(1, 3), keepdim=True)  # (nr, 1, nc, 1)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    q = (padded / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).float() * scale
    return q.view(nr * tr, nc * tc)[:R, :C]


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| (Frobenius), computed in float64."""
    exact = exact.detach().double()
    return float((approx.detach().double() - exact).norm() / exact.norm())


# ------------------------------------------------------------------ accumulation
def round_mantissa(x: torch.Tensor, bits: int, rounding: str = "truncate") -> torch.Tensor:
    """``x`` rounded to ``bits`` significant bits (the leading one included), toward zero or to nearest even.

    Computed in float64; zeros stay zero; the exponent range is not limited.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 53:
        raise ValueError(f"bits={bits!r} is invalid: must be an integer in [2, 53]")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is invalid: must be one of {', '.join(ROUNDINGS)}")
    m, e = torch.frexp(x.double())  # x = m * 2^e, 0.5 <= |m| < 1
    scaled = torch.ldexp(m, torch.full_like(e, bits))  # bits integer bits
    scaled = torch.trunc(scaled) if rounding == "truncate" else torch.round(scaled)
    return torch.ldexp(scaled, e - bits)


def accumulate(products: torch.Tensor, accumulator_bits: int = H800_ACCUMULATOR_BITS,
               promote_every: int | None = PROMOTE_EVERY, rounding: str = "truncate") -> torch.Tensor:
    """Sum ``products`` (..., K) over the last axis the way a narrow accumulator with promotion would.

    In order k = 0, 1, ..., each product is added to a running sum that is then
    rounded to ``accumulator_bits`` significant bits (:func:`round_mantissa`).
    With ``promote_every`` = N_C, after every N_C products the running sum is
    added to a float64 total and restarts from zero (V3's promotion); with
    ``None`` the narrow sum runs over all of K. Returns (...) float64.
    """
    if not isinstance(products, torch.Tensor) or products.dim() < 1 or not products.is_floating_point():
        raise ValueError("products must be a floating-point tensor (..., K)")
    if promote_every is not None and (isinstance(promote_every, bool) or not isinstance(promote_every, int)
                                      or promote_every < 1):
        raise ValueError(f"promote_every={promote_every!r} is invalid: must be a positive integer or None")
    round_mantissa(torch.zeros(1), accumulator_bits, rounding)  # validates bits and rounding
    p = products.double()
    K = p.shape[-1]
    total = torch.zeros(p.shape[:-1], dtype=torch.float64)
    acc = torch.zeros_like(total)
    for k in range(K):
        acc = round_mantissa(acc + p[..., k], accumulator_bits, rounding)
        if promote_every is not None and (k + 1) % promote_every == 0:
            total, acc = total + acc, torch.zeros_like(acc)
    return total + acc


def _narrow_matmul(a: torch.Tensor, b: torch.Tensor, bits: int, rounding: str) -> torch.Tensor:
    """a (M, K) @ b (N, K).T with every partial sum rounded to ``bits``: (M, N) float64, looping over K."""
    a, b = a.double(), b.double()
    acc = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for k in range(a.shape[1]):
        acc = round_mantissa(acc + a[:, k, None] * b[None, :, k], bits, rounding)  # (M, N)
    return acc


def fp8_gemm(a: torch.Tensor, b: torch.Tensor, *, tile_a=ACTIVATION_TILE, tile_b=WEIGHT_BLOCK,
             accumulator: str = "promoted", accumulator_bits: int = H800_ACCUMULATOR_BITS,
             promote_every: int = PROMOTE_EVERY, rounding: str = "truncate") -> torch.Tensor:
    """Simulated FP8 GEMM ``a @ b.T`` for a (M, K) activations and b (N, K) weights (nn.Linear's layout).

    Both operands are quantised to E4M3 (``tile_a``, ``tile_b``; pass the full shapes for
    per-tensor scaling). Then, by ``accumulator``:

    - ``"fp32"``: an fp32 matmul of the dequantised operands (exact products, fp32 sums);
    - ``"narrow"``: the raw E4M3 products summed over all of K in a running sum rounded to
      ``accumulator_bits`` after every addition, then multiplied by the rows' scales (an FP8 tensor
      core that never promotes). The scales must be constant along K: tiles at least K wide
      (``tile_a=(1, K)``, ``tile_b=(1, K)`` for row-wise scaling, or the full shapes);
    - ``"promoted"``: per chunk of ``promote_every`` elements the raw E4M3 products are summed in
      that narrow accumulator, then multiplied by the two tiles' scales and added in fp32 (V3).
      Each chunk must lie inside one tile along K (``promote_every`` divides the tiles' widths).

    Returns (M, N) float32.
    """
    a, b = _check_matrix("a", a), _check_matrix("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"b has {b.shape[1]} columns; it must have as many as a has (K = {a.shape[1]})")
    if accumulator not in ACCUMULATORS:
        raise ValueError(f"accumulator={accumulator!r} is invalid: must be one of {', '.join(ACCUMULATORS)}")
    qa, qb = quantize(a, tile_a), quantize(b, tile_b)
    if accumulator == "fp32":
        return dequantize(qa) @ dequantize(qb).T
    K = a.shape[1]
    if accumulator == "narrow":
        for name, t in (("tile_a", qa.tile), ("tile_b", qb.tile)):
            if t[1] < K:
                raise ValueError(f"{name}={t} is invalid for accumulator='narrow': a tensor core cannot apply "
                                 f"a scale inside its sum, so the scales must be constant along K = {K} (tiles "
                                 f"at least {K} wide, such as (1, {K})); fine-grained tiles need "
                                 "accumulator='promoted'")
        partial = _narrow_matmul(qa.data.float(), qb.data.float(), accumulator_bits, rounding)  # E4M3 units
        scale = qa.scale_per_element()[:, :1].double() * qb.scale_per_element()[:, :1].double().T  # (M, N)
        return (partial * scale).float()
    if isinstance(promote_every, bool) or not isinstance(promote_every, int) or promote_every < 1:
        raise ValueError(f"promote_every={promote_every!r} is invalid: must be a positive integer")
    if any(t[1] % promote_every and t[1] < K for t in (qa.tile, qb.tile)):
        raise ValueError(f"promote_every={promote_every} is invalid for tiles {qa.tile} and {qb.tile}: it must "
                         "divide both tiles' widths along K, so that each chunk lies inside one tile (one scale)")
    xa, xb = qa.data.float(), qb.data.float()  # raw E4M3 values
    sa, sb = qa.scale_per_element(), qb.scale_per_element()  # (M, K), (N, K)
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for start in range(0, K, promote_every):
        chunk = slice(start, min(K, start + promote_every))
        partial = _narrow_matmul(xa[:, chunk], xb[:, chunk], accumulator_bits, rounding)  # (M, N) in E4M3 units
        scale = sa[:, start, None].double() * sb[None, :, start].double()  # (M, N): one scale pair per chunk
        out = (out + partial * scale).float().double()  # the fp32 accumulator on the CUDA cores
    return out.float()


# ------------------------------------------------------------------ training
class _FP8Matmul(torch.autograd.Function):
    """y = x @ w.T with V3's three FP8 GEMMs simulated: quantise-dequantise each operand, fp32 accumulation.

    Fprop: x per 1x128 along in_features, w per 128x128.
    Dgrad: dy per 1x128 along out_features, the same 128x128 w.
    Wgrad: dy.T and x.T per 1x128 along the tokens (the contraction of this GEMM).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xq = _fake_quantize_fast(x, ACTIVATION_TILE)  # (T, in)
        wq = _fake_quantize_fast(w, WEIGHT_BLOCK)  # (out, in)
        ctx.save_for_backward(x, wq)
        return xq @ wq.T  # (T, out)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, wq = ctx.saved_tensors
        dx = _fake_quantize_fast(dy, ACTIVATION_TILE) @ wq  # (T, in)
        dw = _fake_quantize_fast(dy.T, ACTIVATION_TILE) @ _fake_quantize_fast(x.T, ACTIVATION_TILE).T  # (out, in)
        return dx, dw  # dw (out, in) in fp32 for the fp32 master weights


def fp8_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for x (..., in) with simulated fine-grained FP8 GEMMs forward and backward."""
    lead = x.shape[:-1]
    y = _FP8Matmul.apply(x.reshape(-1, x.shape[-1]).float(), weight.float())  # (T, out)
    return y.reshape(*lead, weight.shape[0])


class FP8Linear(nn.Module):
    """An ``nn.Linear`` (no bias) whose GEMMs run through :func:`fp8_linear`; shares the original's weight."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("FP8Linear takes a linear layer without bias (every mlakit projection has none)")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same fp32 master weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=1x128/128x128"


def _fp8_experts_forward(experts, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                         dispatch: str = "sorted", backend: str = "auto") -> torch.Tensor:
    """Routed experts with every expert GEMM through :func:`fp8_linear` (a loop over experts; dispatch ignored)."""
    local = indices - experts.first_expert  # (T, k)
    out = torch.zeros_like(x, dtype=torch.float32)  # (T, H)
    I = experts.intermediate_size
    for e, (gate_up, down) in enumerate(experts.per_expert()):
        rows, slots = torch.nonzero(local == e, as_tuple=True)
        if rows.numel() == 0:
            continue
        h = fp8_linear(x[rows], gate_up)  # (n, 2I): gate rows first, then up
        h = F.silu(h[:, :I]) * h[:, I:]  # (n, I)
        y = fp8_linear(h, down)  # (n, H)
        out = out.index_add(0, rows, y * weights[rows, slots, None].float())
    return out.to(x.dtype)


@contextlib.contextmanager
def fp8_training(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> Iterator[list[str]]:
    """Inside the block, ``model``'s linear layers (not those named in ``skip``) and routed experts run
    simulated FP8 GEMMs; on leaving, the original modules come back. Yields the swapped modules' names.

    The parameters are the same objects throughout: an optimizer built before still updates them.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    patched: list[nn.Module] = []
    names: list[str] = []
    try:
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"{name}.{child_name}" if name else child_name
                if isinstance(child, nn.Linear) and child_name not in skip and full not in skip:
                    setattr(module, child_name, FP8Linear(child))
                    swapped.append((module, child_name, child))
                    names.append(full)
            if isinstance(module, RoutedExperts):
                module.forward = _fp8_experts_forward.__get__(module)
                patched.append(module)
                names.append(name)
        yield names
    finally:
        for module, child_name, child in reversed(swapped):
            setattr(module, child_name, child)
        for module in patched:
            del module.forward  # back to the class's forward


# ------------------------------------------------------------------ bytes
def bytes_per_element(tile=ACTIVATION_TILE) -> float:
    """Bytes per element of an E4M3 tensor with one fp32 scale per ``tile``: 1 + 4 / (tile elements)."""
    tr, tc = _check_tile("tile", tile)
    return 1.0 + 4.0 / (tr * tc)


__all__ = ["E4M3", "E4M3_MAX", "E4M3_MANTISSA_BITS", "E4M3_MIN_NORMAL", "TILE", "ACTIVATION_TILE", "WEIGHT_BLOCK",
           "PROMOTE_EVERY", "H800_ACCUMULATOR_BITS", "FP8Tensor", "cast_e4m3", "round_e4m3", "tile_amax", "quantize",
           "quantize_per_tensor", "dequantize", "fake_quantize", "relative_error", "round_mantissa", "accumulate",
           "fp8_gemm", "fp8_linear", "FP8Linear", "fp8_training", "bytes_per_element"]
