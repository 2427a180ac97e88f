"""Checkers for the exercises of lesson 02: MLA's low-rank compression of keys and values.

The layout is :mod:`mlakit.mla`'s (DeepSeek-V2 §2.1.2): the latent is
c_KV = RMSNorm(W_DKV h) with W_DKV stored like an ``nn.Linear`` weight
(d_c, d), and ``kv_b_proj``'s weight (n_h (d_nope + d_v), d_c) holds, head
after head, the rows of W_UK,i then W_UV,i.
"""

from __future__ import annotations

import operator

import torch

from ...mla import LATENT_NORM_EPS
from ._core import Answer, _close, _expect_tensor, _Fail, checker, diagnose


def _rms(c: torch.Tensor, dims=-1) -> torch.Tensor:
    return c * torch.rsqrt(c.pow(2).mean(dims, keepdim=True) + LATENT_NORM_EPS)


# ---------------------------------------------------------------- 02.1
def reference_compress_kv(h: torch.Tensor, w_dkv: torch.Tensor, norm_weight: torch.Tensor) -> torch.Tensor:
    """c_KV = RMSNorm(h W_DKV^T) * norm_weight, eps 1e-6: (B, T, d) and (d_c, d) -> (B, T, d_c)."""
    return _rms(h @ w_dkv.T) * norm_weight


@checker("02.1", "compress_kv")
def check_compress_kv(compress_kv: Answer) -> str:
    """Exercise 02.1: compress_kv(h, w_dkv, norm_weight) -> the normalised latent c_KV (B, T, d_c)."""

    g = torch.Generator().manual_seed(21)
    # (B, T, d, d_c); the first case is square so an untransposed weight still runs and can be named
    shapes = [(2, 4, 12, 12), (2, 5, 16, 8), (1, 3, 10, 4)]
    for B, T, d, d_c in shapes:
        h = torch.randn(B, T, d, generator=g)
        w = 0.3 * torch.randn(d_c, d, generator=g)  # raw latents far from unit RMS, so a missing norm shows
        gain = 0.5 + torch.rand(d_c, generator=g)  # a learned gain that is not all ones
        want = reference_compress_kv(h, w, gain)
        got = _expect_tensor(compress_kv(h, w, gain), want.shape,
                             f"c_KV for h {tuple(h.shape)} and w_dkv {tuple(w.shape)}")
        if _close(got, want):
            continue
        raw = h @ w.T  # (B, T, d_c)
        not_normalised = ("the latent is not normalised. Hint: MLA applies RMSNorm to c_KV (kv_a_layernorm): "
                          "divide each token's latent by sqrt(mean(c^2) + 1e-6), then multiply by norm_weight")
        wrong_axis = ("the root mean square is taken over the wrong axis. Hint: normalise each token's "
                      "latent over its own d_c entries: mean over the last dimension")
        diagnose(got, [
            (raw, not_normalised),
            (raw * gain, not_normalised),
            (_rms(raw), "the RMSNorm gain is missing. Hint: multiply the normalised latent by norm_weight"),
            (_rms(h @ w) * gain if d == d_c else None, "the weight is used untransposed. Hint: like an nn.Linear "
                                                       "weight, w_dkv is stored (d_c, d): c = h @ w_dkv.T"),
            (_rms(raw - raw.mean(-1, keepdim=True)) * gain, "the mean was subtracted (that is LayerNorm). Hint: "
                                                            "RMSNorm only divides by the root mean square; it "
                                                            "does not centre"),
            *[(_rms(raw, dims) * gain, wrong_axis) for dims in ((0, 1, 2), (0,), (1,))],
        ])
        raise _Fail(f"values differ from RMSNorm(h @ w_dkv.T) * norm_weight for h {tuple(h.shape)}. "
                    "Hint: c = h @ w_dkv.T; c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + 1e-6) * norm_weight")
    return f"matches RMSNorm(h W_DKV^T) on {len(shapes)} inputs"


# ---------------------------------------------------------------- 02.2
def reference_expand_kv(c_kv: torch.Tensor, w_ukv: torch.Tensor, n_heads: int,
                        d_nope: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head keys k_C (B, n_h, T, d_nope) and values v (B, n_h, T, d_v) from c_KV (B, T, d_c)."""
    d_c = c_kv.shape[-1]
    w = w_ukv.view(n_heads, -1, d_c)  # (n_h, d_nope + d_v, d_c): rows of W_UK,i then W_UV,i
    kv = torch.einsum("btc,hrc->bhtr", c_kv, w)  # (B, n_h, T, d_nope + d_v)
    return kv[..., :d_nope], kv[..., d_nope:]


@checker("02.2", "expand_kv")
def check_expand_kv(expand_kv: Answer) -> str:
    """Exercise 02.2: expand_kv(c_kv, w_ukv, n_heads, d_nope) -> (k_C, v), each (B, n_h, T, ...)."""

    g = torch.Generator().manual_seed(22)
    # (B, T, d_c, n_h, d_nope, d_v): equal widths first, so swapped keys and values still have the right shapes
    shapes = [(2, 4, 6, 3, 5, 5), (2, 5, 8, 3, 4, 6), (1, 1, 4, 4, 3, 2)]
    for B, T, d_c, n_h, d_nope, d_v in shapes:
        c = torch.randn(B, T, d_c, generator=g)
        w = torch.randn(n_h * (d_nope + d_v), d_c, generator=g)
        want_k, want_v = reference_expand_kv(c, w, n_h, d_nope)
        out = expand_kv(c, w, n_h, d_nope)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):  # a list is as right as a tuple
            raise _Fail("return a tuple (k_c, v)")
        k, v = out
        for name, t, width in (("k_c", k, d_nope), ("v", v, d_v)):
            if isinstance(t, torch.Tensor) and tuple(t.shape) == (B, T, n_h, width) and T != n_h:
                raise _Fail(f"{name} has shape {tuple(t.shape)} = (B, T, n_h, d). Hint: put the head axis "
                            "before time, (B, n_h, T, d): .transpose(1, 2)")
        what = f"for c_kv {tuple(c.shape)}, {n_h} heads, d_nope {d_nope}, d_v {d_v}"
        k = _expect_tensor(k, want_k.shape, f"k_c {what}")
        v = _expect_tensor(v, want_v.shape, f"v {what}")
        if _close(k, want_k) and _close(v, want_v):
            continue
        diagnose((k, v), [
            ((want_v, want_k) if d_nope == d_v else None,
             "keys and values are swapped. Hint: in each head's block of rows the first d_nope "
             "rows are W_UK,i (keys), the remaining d_v rows W_UV,i (values)"),
        ], same=lambda a, b: _close(a[0], b[0]) and _close(a[1], b[1]))
        flat = c @ w.T  # (B, T, n_h (d_nope + d_v))
        diagnose(k, [  # the keys alone
            (flat[..., : n_h * d_nope].view(B, T, n_h, d_nope).transpose(1, 2),  # (B, n_h, T, d_nope)
             "the rows are split as all keys, then all values. Hint: kv_b_proj's rows are grouped per "
             "head, [W_UK,0 ; W_UV,0 ; W_UK,1 ; W_UV,1 ; ...]: view the weight as "
             "(n_heads, d_nope + d_v, d_c) before splitting"),
        ])
        if _close(k, want_k):
            raise _Fail(f"the keys are right but the values are not {what}. Hint: the values come from the "
                        "last d_v rows of each head's block, W_UV,i c")
        raise _Fail(f"the keys differ from W_UK,i c_KV {what}. Hint: w_ukv.view(n_heads, d_nope + d_v, d_c), "
                    "keys from rows [:d_nope] of each head, values from the rest")
    return f"expands keys and values per head on {len(shapes)} inputs"


# ---------------------------------------------------------------- 02.3
def reference_low_rank_factors(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-r factorisation w ~ w_up @ w_down (Eckart-Young): w_up = U_r (m, r), w_down = S_r V_r^T (r, n)."""
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)  # singular values in descending order
    return U[:, :r], S[:r, None] * Vh[:r]


def _orthonormal(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=g))[0]  # (n, k), orthonormal columns


@checker("02.3", "low_rank_factors")
def check_low_rank_factors(low_rank_factors: Answer) -> str:
    """Exercise 02.3: low_rank_factors(w, r) -> (w_up (m, r), w_down (r, n)), the best rank-r approximation of w."""

    g = torch.Generator().manual_seed(23)
    shapes = [(12, 8, 3), (6, 10, 2), (20, 16, 5), (9, 9, 9)]  # (m, n, r); the last one is exact
    for m, n, r in shapes:
        k = min(m, n)
        S = 2.0 ** -torch.arange(k, dtype=torch.float32) * (1 + 0.1 * torch.rand(k, generator=g))  # decaying
        S = S.sort(descending=True).values
        w = _orthonormal(m, k, g) @ torch.diag(S) @ _orthonormal(n, k, g).T  # (m, n) with singular values S
        out = low_rank_factors(w, r)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):  # a list is as right as a tuple
            raise _Fail("return a tuple (w_up, w_down)")
        up, down = out
        if isinstance(down, torch.Tensor) and tuple(down.shape) == (n, r) and n != r:
            raise _Fail(f"w_down has shape {tuple(down.shape)}; expected ({r}, {n}). Hint: w_down maps an "
                        "n-vector to r numbers, so it is (r, n): the first r rows of Vh, scaled")
        up = _expect_tensor(up, (m, r), f"w_up for a ({m}, {n}) matrix and r = {r}")
        down = _expect_tensor(down, (r, n), f"w_down for a ({m}, {n}) matrix and r = {r}")
        prod = up @ down
        best = float(S[r:].pow(2).sum().sqrt())
        err = float((w - prod).norm())
        if err <= best * (1 + 1e-3) + 1e-5:
            continue
        U, S2, Vh = torch.linalg.svd(w, full_matrices=False)
        where = f"for a ({m}, {n}) matrix at rank {r} the error is {err:.4g}; the best possible is {best:.4g}"
        diagnose(prod, [
            (U[:, :r] @ Vh[:r], "the singular values are missing: w ~ U_r diag(S_r) V_r^T, so fold "
                                "S_r into one of the factors"),
            (U[:, k - r:] @ torch.diag(S2[k - r:]) @ Vh[k - r:], "you kept the smallest singular values; "
                                                                 "torch.linalg.svd sorts them in descending "
                                                                 "order, so keep the first r"),
            (U[:, :r] @ torch.diag(S2[:r]) @ Vh[:, :r].T if m >= n else None,  # (m, k): k = n only if m >= n
             "torch.linalg.svd returns Vh = V^T: the top right singular vectors are its first r ROWS, Vh[:r]"),
        ], prefix=f"{where}. Hint: ")
        raise _Fail(f"{where}. Hint: U, S, Vh = torch.linalg.svd(w, full_matrices=False); keep the top r of each")
    return f"reaches the best possible error (Eckart-Young) on {len(shapes)} matrices"


# ---------------------------------------------------------------- 02.4
def reference_rank_for_energy(s: torch.Tensor, fraction: float) -> int:
    """The smallest r whose top r singular values keep at least `fraction` of sum(s^2); s sorted descending."""
    energy = s.double().pow(2)
    kept = energy.cumsum(0) / energy.sum()  # (len(s),): fraction kept by rank 1, 2, ...
    return int((kept < fraction - 1e-12).sum()) + 1


@checker("02.4", "rank_for_energy")
def check_rank_for_energy(rank_for_energy: Answer) -> str:
    """Exercise 02.4: rank_for_energy(s, fraction) -> the smallest rank that keeps `fraction` of the energy."""

    g = torch.Generator().manual_seed(24)
    decaying = torch.rand(40, generator=g).mul(0.5).add(0.75).cumprod(0).sort(descending=True).values
    cases = [
        (torch.tensor([3.0, 2.0, 1.0, 0.5]), 0.9),
        (torch.ones(4), 0.5),  # exactly half the energy at rank 2
        (decaying, 0.99),
        (decaying, 0.5),
        (torch.tensor([5.0, 0.1, 0.1]), 0.95),
    ]
    for s, fraction in cases:
        want = reference_rank_for_energy(s, fraction)
        got = rank_for_energy(s, fraction)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        try:
            if isinstance(got, bool):
                raise TypeError
            got = operator.index(got)  # int, numpy integer or integer tensor
        except TypeError:
            raise _Fail(f"return an int (a number of singular values), got {type(got).__name__}") from None
        if got == want:
            continue
        where = f"for s = {[round(v, 3) for v in s.tolist()[:6]]}{' ...' if len(s) > 6 else ''} and fraction {fraction} " \
                f"you return {got}; expected {want}"
        plain = s.double().cumsum(0) / s.double().sum()  # (len(s),): unsquared
        kept = s.double().pow(2).cumsum(0) / s.double().pow(2).sum()  # (len(s),)
        diagnose(got, [
            (int((plain < fraction - 1e-12).sum()) + 1, "energy is the sum of SQUARED singular values"),
            (want - 1, "return how many singular values you keep (a count starting at 1), "
                       "not the index of the last one"),
            (int((kept <= fraction).sum()) + 1, "keep the smallest r whose energy reaches the fraction (>=), "
                                                "not the first that exceeds it"),
        ], same=operator.eq, prefix=f"{where}. Hint: ")
        raise _Fail(f"{where}. Hint: kept = cumsum(s^2) / sum(s^2); the answer is 1 + the number of ranks "
                    "with kept < fraction")
    return f"right on {len(cases)} spectra"


__all__ = ["reference_compress_kv", "check_compress_kv", "reference_expand_kv", "check_expand_kv",
           "reference_low_rank_factors", "check_low_rank_factors", "reference_rank_for_energy",
           "check_rank_for_energy"]
