"""Checkers for the exercises of lesson 14: what training costs, and FP8 (GPU hours from 6ND, V3's 1x128
activation tiles, accumulation promoted every N_C elements).

The references follow DeepSeek-V3 §3.3 (arXiv 2412.19437) and agree with the library: :func:`mlakit.cost.gpu_hours`
with 6 x parameters x tokens, :func:`mlakit.fp8.quantize` with the (1, 128) tile and :func:`mlakit.fp8.accumulate`.
They are written here independently, so the tests can compare them with the library. Each checker runs the
learner's function on cases chosen so that every typical mistake gives a different answer, and :func:`diagnose`
names the one the learner's answer equals.
"""

from __future__ import annotations

import math

import torch

from ._core import (
    Answer,
    _as_number,
    _close,
    _expect_sequence,
    _expect_tensor,
    _Fail,
    checker,
    diagnose,
)

E4M3_MAX = 448.0
TILE = 128


# ---------------------------------------------------------------- 14.1
def _hours(active_params, tokens, peak_flops, mfu, *, per_token: float = 6.0, mfu_use: str = "divide",
           seconds: float = 3600.0) -> float:
    flops = per_token * active_params * tokens
    rate = {"divide": peak_flops * mfu, "multiply": peak_flops / mfu, "ignore": peak_flops}[mfu_use]
    return flops / rate / seconds


def reference_training_gpu_hours(active_params: float, tokens: float, peak_flops: float, mfu: float) -> float:
    """GPU hours to train: 6 x active_params x tokens FLOPs at peak_flops x mfu FLOP/s per GPU, in hours."""
    return _hours(active_params, tokens, peak_flops, mfu)


_HOURS_MISTAKES = [
    (dict(per_token=2.0), "that counts 2 N D, the forward pass only. Hint: training also runs the backward pass, "
                          "which costs twice the forward (gradients for the activations and for the weights): 6 N D"),
    (dict(per_token=3.0), "that counts 3 N D. Hint: a multiply-add is 2 FLOPs, so the forward costs 2 N per token and "
                          "forward + backward 6 N"),
    (dict(seconds=1.0), "that is GPU seconds. Hint: divide by 3600 for hours"),
    (dict(seconds=86400.0), "that is GPU days. Hint: divide by 3600 seconds per hour, not by 86400"),
    (dict(mfu_use="multiply"), "the MFU multiplies the time. Hint: the GPU delivers peak_flops x mfu FLOP/s, so divide "
                               "the FLOPs by that product (a lower MFU means more hours)"),
    (dict(mfu_use="ignore"), "the MFU is left out: that is the time at 100% of the peak. Hint: divide by "
                             "peak_flops x mfu"),
]


@checker("14.1", "training_gpu_hours")
def check_training_gpu_hours(training_gpu_hours: Answer) -> str:
    """Exercise 14.1: training_gpu_hours(active_params, tokens, peak_flops, mfu) -> GPU hours."""
    cases = [(37e9, 14.8e12, 989e12, 0.4), (7e9, 2e12, 312e12, 0.5), (405e9, 15e12, 989e12, 0.38),
             (1e6, 1e9, 1e12, 1.0)]
    for args in cases:
        want = reference_training_gpu_hours(*args)
        got = _as_number(training_gpu_hours(*args), f"training_gpu_hours{args}")
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        where = f"for N = {args[0]:.3g}, D = {args[1]:.3g}, peak {args[2]:.3g} FLOP/s, MFU {args[3]}: you give " \
                f"{got:.6g}; expected {want:.6g}. "
        diagnose(got, [(_hours(*args, **s), hint) for s, hint in _HOURS_MISTAKES],
                 same=lambda a, b: math.isclose(a, b, rel_tol=1e-6), prefix=where)
        raise _Fail(where + "Hint: 6 * active_params * tokens / (peak_flops * mfu) / 3600")
    return (f"matches the reference on {len(cases)} runs: V3's 37B active on 14.8T tokens at 40% of 989 TFLOPS is "
            f"{reference_training_gpu_hours(*cases[0]) / 1e6:.2f}M GPU hours")


# ---------------------------------------------------------------- 14.2
def _tiles(x: torch.Tensor, *, rows: int = 1, cols: int = TILE, dtype=torch.float8_e4m3fn, inverted: bool = False,
           zero: str = "one") -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) with one scale per rows x cols tile, or one typical mistake of it (keyword switches)."""
    M, K = x.shape
    rows, cols = min(rows, M), min(cols, K)
    tiles = x.float().view(M // rows, rows, K // cols, cols)
    amax = tiles.abs().amax(dim=(1, 3), keepdim=True)
    if zero == "one":
        amax = torch.where(amax > 0, amax, torch.full_like(amax, E4M3_MAX))  # scale 1 for an all-zero tile
    scale = E4M3_MAX / amax if inverted else amax / E4M3_MAX
    top = torch.finfo(dtype).max
    q = (tiles / scale).clamp(-top, top).to(dtype).float().view(M, K)
    return q, scale.view(M // rows, K // cols)


def reference_quantize_1x128(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """V3's activation quantisation: one scale per 1 x 128 tile, scale = max |tile| / 448, q = E4M3(x / scale).

    x (M, K) with K a multiple of 128; returns q (M, K), the E4M3 values (here as float32), and scale
    (M, K // 128) float32, so that x ~ q * scale tile by tile. A tile of zeros gets scale 1.
    """
    return _tiles(x)


_TILE_MISTAKES = [
    (dict(inverted=True), "the scale is upside down (448 / max). Hint: scale = max|tile| / 448, and q = x / scale, so "
                          "the largest value of each tile lands on 448"),
    (dict(dtype=torch.float8_e5m2), "those are E5M2 values (2 mantissa bits). Hint: V3 uses E4M3 for every tensor: "
                                    "torch.float8_e4m3fn"),
    (dict(dtype=torch.bfloat16), "those values are rounded to bfloat16, not to FP8. Hint: cast with "
                                 ".to(torch.float8_e4m3fn)"),
]


def _tile_cases():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(4, 512, generator=g)
    x[:, [5, 300]] *= 80  # outlier channels in tiles 0 and 2
    y = torch.randn(3, 256, generator=g) * 1e-3
    y[1, :128] = 0.0  # a tile of zeros
    z = torch.randn(2, 128, generator=g) * 1000  # values far beyond 448
    return [x, y, z]


@checker("14.2", "quantize_1x128")
def check_quantize_1x128(quantize_1x128: Answer) -> str:
    """Exercise 14.2: quantize_1x128(x) -> (q, scale), E4M3 values and one scale per 1 x 128 tile."""
    cases = _tile_cases()
    for x in cases:
        M, K = x.shape
        want_q, want_s = reference_quantize_1x128(x)
        q, s = _expect_sequence(quantize_1x128(x), 2, f"quantize_1x128 of a {tuple(x.shape)} tensor")
        if isinstance(s, torch.Tensor) and tuple(s.shape) != (M, K // TILE):
            shapes = {(1, 1): "one scale for the whole tensor (per-tensor scaling)",
                      (M, 1): "one scale per row", (1, K // TILE): "one scale per column of tiles",
                      (max(1, M // TILE), K): "tiles of 128 rows x 1 column (the wrong axis)"}
            if tuple(s.shape) in shapes or s.numel() == 1:
                raise _Fail(f"the scales have shape {tuple(s.shape)}: {shapes.get(tuple(s.shape), shapes[(1, 1)])}. "
                            f"Hint: one scale per token (row) and 128 channels (columns): shape ({M}, {K // TILE}), "
                            "from x.view(M, K // 128, 128).abs().amax(-1)")
        s = _expect_tensor(s, want_s.shape, "the scales")
        q = _expect_tensor(q, want_q.shape, "q")
        if torch.isnan(q.float()).any() or torch.isnan(s.float()).any():
            raise _Fail("NaN in the answer: a tile of zeros has max 0, and 0 / 0 is NaN. Hint: give such a tile "
                        "scale 1 (torch.where(amax > 0, amax / 448, 1.0))")
        if not _close(s.float(), want_s):
            diagnose((q.float(), s.float()), [(_tiles(x, **sw), hint) for sw, hint in _TILE_MISTAKES[:1]],
                     same=lambda a, b: _close(a[1], b[1]))
            raise _Fail(f"the scales of the {tuple(x.shape)} input differ from max|tile| / 448 (first row: "
                        f"{[round(v, 5) for v in s[0].float().tolist()]}, expected "
                        f"{[round(v, 5) for v in want_s[0].tolist()]})")
        if not torch.equal(q.float(), want_q):
            if q.float().abs().max() > E4M3_MAX:
                raise _Fail(f"q holds {q.float().abs().max().item():.4g}, beyond E4M3's largest value 448. Hint: "
                            "divide x by its tile's scale before the cast")
            diagnose((q.float(), s.float()), [(_tiles(x, **sw), hint) for sw, hint in _TILE_MISTAKES],
                     same=lambda a, b: torch.equal(a[0], b[0]))
            if torch.equal((q.float() * s.float().repeat_interleave(TILE, 1)), x.float()):
                raise _Fail("q * scale equals x exactly: q is not rounded. Hint: cast x / scale to "
                            "torch.float8_e4m3fn (round to nearest even), then back with .float() if you like")
            raise _Fail(f"q differs from the E4M3 values of x / scale for the {tuple(x.shape)} input. Hint: "
                        "(x.view(M, K // 128, 128) / scale[..., None]).to(torch.float8_e4m3fn), reshaped to (M, K)")
    return (f"matches the reference on {len(cases)} inputs: each tile's max lands on 448, outliers stay in their "
            "tile, a tile of zeros gets scale 1")


# ---------------------------------------------------------------- 14.3
def _promoted(products: torch.Tensor, narrow, interval: int, *, mode: str = "promote") -> torch.Tensor:
    """The narrow-then-promoted sum over the last axis, or one typical mistake of it."""
    p = products.double()
    K = p.shape[-1]
    total = torch.zeros(p.shape[:-1], dtype=torch.float64)
    acc = torch.zeros_like(total)
    for k in range(K):
        if mode == "exact":
            total = total + p[..., k]
            continue
        if mode == "round_once":  # the chunk summed exactly, rounded only when promoted
            acc = acc + p[..., k]
            if (k + 1) % interval == 0 or k == K - 1:
                total, acc = total + narrow(acc), torch.zeros_like(acc)
            continue
        acc = narrow(acc + p[..., k])
        if mode == "promote" and (k + 1) % interval == 0:
            total, acc = total + acc, torch.zeros_like(acc)
        elif mode == "no_reset" and (k + 1) % interval == 0:
            total = total + acc
        elif mode == "off_by_one" and k % interval == 0:
            total, acc = total + acc, torch.zeros_like(acc)
    if mode in ("exact", "round_once"):
        return total
    if mode == "no_reset":
        return total if K % interval == 0 else total + acc
    return total + acc


def reference_promoted_sum(products: torch.Tensor, narrow, interval: int) -> torch.Tensor:
    """Sum ``products`` (..., K) over the last axis as V3's promoted accumulation does: (...) float64.

    In order k = 0, 1, ...: acc = narrow(acc + products[..., k]) (the tensor core's narrow accumulator);
    after every ``interval`` products (N_C), acc is added to a float64 total and restarts at 0.
    """
    return _promoted(products, narrow, interval)


_PROMOTE_MISTAKES = [
    ("exact", "that is the exact sum: the narrow accumulator is never used. Hint: after each addition round the "
              "running sum with acc = narrow(acc + products[..., k])"),
    ("never", "that is the narrow accumulator over all of K, never promoted. Hint: every `interval` products, add acc "
              "to the total (in float64) and restart acc at 0"),
    ("no_reset", "acc is added to the total but not restarted, so earlier chunks are counted again. Hint: after "
                 "total = total + acc, set acc back to zeros"),
    ("round_once", "each chunk is summed exactly and rounded once. Hint: the narrow accumulator rounds after every "
                   "addition: acc = narrow(acc + products[..., k])"),
    ("off_by_one", "promotion happens after products 0, interval, 2 interval, ... Hint: promote after the "
                   "interval-th product, when (k + 1) % interval == 0"),
]


def _narrow(bits: int):
    def narrow(x: torch.Tensor) -> torch.Tensor:
        m, e = torch.frexp(x.double())
        return torch.ldexp(torch.trunc(torch.ldexp(m, torch.full_like(e, bits))), e - bits)
    return narrow


def _promote_cases():
    g = torch.Generator().manual_seed(3)
    return [(torch.ones(2, 32), _narrow(4), 16),  # 16 + 1 needs 5 bits: a 4-bit sum stalls at 16
            (torch.rand(3, 96, generator=g), _narrow(6), 32),
            (torch.randn(2, 100, generator=g), _narrow(5), 16),  # K not a multiple of the interval
            (torch.rand(4, 64, generator=g) + 1, _narrow(7), 64)]


@checker("14.3", "promoted_sum")
def check_promoted_sum(promoted_sum: Answer) -> str:
    """Exercise 14.3: promoted_sum(products, narrow, interval) -> (...) narrow partial sums promoted every interval."""
    cases = _promote_cases()
    for products, narrow, interval in cases:
        want = reference_promoted_sum(products, narrow, interval)
        got = _expect_tensor(promoted_sum(products, narrow, interval), want.shape,
                             f"promoted_sum of {tuple(products.shape)} products")
        if _close(got.double(), want, atol=1e-9, rtol=1e-9):
            continue
        where = f"for {tuple(products.shape)} products with interval {interval}: "
        mistakes = [(_promoted(products, narrow, interval, mode=m), hint) for m, hint in _PROMOTE_MISTAKES]
        diagnose(got.double(), mistakes, same=lambda a, b: _close(a, b, atol=1e-9, rtol=1e-9), prefix=where)
        raise _Fail(where + f"you give {[round(v, 4) for v in got.double().tolist()]}; expected "
                    f"{[round(v, 4) for v in want.tolist()]}. Hint: acc = narrow(acc + products[..., k]) for each k; "
                    "when (k + 1) % interval == 0, total += acc and acc = 0; return total + acc")
    return (f"matches the reference on {len(cases)} cases: 32 ones in a 4-bit accumulator give 16, promoted every "
            "16 they give 32")


__all__ = ["reference_training_gpu_hours", "check_training_gpu_hours", "reference_quantize_1x128",
           "check_quantize_1x128", "reference_promoted_sum", "check_promoted_sum"]
