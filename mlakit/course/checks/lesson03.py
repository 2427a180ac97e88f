"""Checkers for the exercises of lesson 03: MLA's decoupled rotary position embedding.

Conventions of :mod:`mlakit.mla` (DeepSeek-V2 §2.1.3, DeepSeek-V3 §2.1.1):
RoPE rotates adjacent pairs (x0, x1), (x2, x3), ...; each head has its own
rotated query part q_R, ONE rotated key k_R is shared by all heads, and a
head scores [q_C ; q_R] . [k_C ; k_R] / sqrt(d_nope + d_rope), times YaRN's
mscale^2 when the context is stretched.
"""

from __future__ import annotations

import math

import torch

from ...attention import causal_mask
from ...layers import RotaryEmbedding, softmax_scale
from ._core import (
    Answer,
    _close,
    _expansion,
    _expect_tensor,
    _Fail,
    _LearnerError,
    _number_or_value,
    _ShapeRecorder,
    checker,
    diagnose,
)


# ---------------------------------------------------------------- 03.1
def reference_rope_pairs(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate adjacent pairs of x (..., T, d) at integer positions (T,): pair i turns by position * base^(-2i/d)."""
    return RotaryEmbedding(x.shape[-1], base, interleave=True)(x, positions)


def _rope_by_hand(x, positions, inv_freq, interleave=True, back_in_place=True):
    angles = positions.double()[:, None] * inv_freq.double()  # (T, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = (x[..., 0::2], x[..., 1::2]) if interleave else x.chunk(2, dim=-1)
    r1, r2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    if interleave and back_in_place:
        return torch.stack((r1, r2), dim=-1).flatten(-2)
    return torch.cat((r1, r2), dim=-1)


@checker("03.1", "rope_pairs")
def check_rope_pairs(rope_pairs: Answer) -> str:
    """Exercise 03.1: rope_pairs(x, positions, base) -> x with adjacent pairs rotated by position (DeepSeek's RoPE)."""

    g = torch.Generator().manual_seed(31)
    cases = [((2, 3, 5, 8), 10000.0), ((4, 16), 10000.0), ((1, 2, 3, 4), 500.0)]
    for shape, base in cases:
        x = torch.randn(shape, generator=g)
        T, d = shape[-2], shape[-1]
        positions = torch.randint(0, 50, (T,), generator=g)
        want = reference_rope_pairs(x, positions, base)
        got = _expect_tensor(rope_pairs(x, positions, base), want.shape,
                             f"the rotated x for x {tuple(shape)}")
        if _close(got, want):
            continue
        inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
        half_freq = base ** (-torch.arange(d // 2, dtype=torch.float64) / d)  # (d/2,): base^(-i/d)
        diagnose(got, [
            (x, "the output equals the input. Hint: rotate pair i by the angle position * base^(-2i/d)"),
            (RotaryEmbedding(d, base, interleave=False)(x, positions),
             "that is the halves convention (x_i paired with x_{i+d/2}, as in GPT-NeoX and Llama). "
             "Hint: DeepSeek rotates adjacent pairs (x0, x1), (x2, x3), ...: x[..., 0::2] and x[..., 1::2]"),
            (_rope_by_hand(x, positions, inv_freq, back_in_place=False),
             "the rotated pairs are not put back in place: all first members come before all second "
             "members. Hint: pair i goes back to positions 2i and 2i+1: torch.stack((r1, r2), -1).flatten(-2)"),
            (reference_rope_pairs(x, -positions, base),
             "the pairs rotate the wrong way. Hint: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos)"),
            (_rope_by_hand(x, positions, half_freq),
             "the frequencies are off: pair i turns at base^(-i/d). Hint: the exponent is -2i/d "
             "(torch.arange(0, d, 2) / d)"),
            (reference_rope_pairs(x, positions + 1, base),
             "every position is off by one. Hint: positions are used as given (the first token is 0)"),
        ])
        raise _Fail(f"values differ from the reference for x {tuple(shape)} and base {base:g}. Hint: angle = "
                    "position * base^(-2i/d) for pair i; (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos)")
    return f"matches the pairwise rotary embedding on {len(cases)} inputs"


# ---------------------------------------------------------------- 03.2
def reference_decoupled_scores(q_c: torch.Tensor, q_r: torch.Tensor, k_c: torch.Tensor,
                               k_r: torch.Tensor) -> torch.Tensor:
    """(q_C k_C^T + q_R k_R^T) / sqrt(d_nope + d_rope): (B, n_h, T, S); k_r (B, S, d_rope) is shared by the heads."""
    scale = (q_c.shape[-1] + q_r.shape[-1]) ** -0.5
    content = q_c @ k_c.transpose(-2, -1)  # (B, n_h, T, S)
    position = q_r @ k_r[:, None].transpose(-2, -1)  # (B, n_h, T, d_rope) @ (B, 1, d_rope, S) -> (B, n_h, T, S)
    return (content + position) * scale


def _masked_as(got: torch.Tensor, want: torch.Tensor, keep: torch.Tensor) -> bool:
    """``got`` equals ``want`` where ``keep`` (T, S) is True and is masked (-inf or a large negative number) elsewhere."""
    hidden = ~keep.expand_as(want)
    return bool((got.detach().double()[hidden] <= -1e4).all()) and _close(got.masked_fill(hidden, 0.0),
                                                                          want.masked_fill(hidden, 0.0))


@checker("03.2", "decoupled_scores")
def check_decoupled_scores(decoupled_scores: Answer) -> str:
    """Exercise 03.2: decoupled_scores(q_c, q_r, k_c, k_r) -> MLA's attention scores (B, n_h, T, S), no mask."""

    g = torch.Generator().manual_seed(32)
    shapes = [(2, 3, 4, 6, 8, 4), (1, 2, 1, 5, 6, 2), (2, 2, 3, 3, 4, 4)]  # (B, n_h, T, S, d_nope, d_rope)
    for B, n_h, T, S, d_nope, d_rope in shapes:
        q_c, q_r = torch.randn(B, n_h, T, d_nope, generator=g), torch.randn(B, n_h, T, d_rope, generator=g)
        k_c, k_r = torch.randn(B, n_h, S, d_nope, generator=g), torch.randn(B, S, d_rope, generator=g)
        want = reference_decoupled_scores(q_c, q_r, k_c, k_r)
        try:
            got = decoupled_scores(q_c, q_r, k_c, k_r)
        except NotImplementedError:
            raise
        except _LearnerError as raised:  # a shape mismatch, most likely from the shared (head-less) operand
            if not isinstance(raised.error, RuntimeError):
                raise
            raise _Fail(f"your code raised RuntimeError: {raised.error}. Hint: k_r (B, S, d_rope) has no head axis, it is "
                        "shared by all heads: k_r[:, None] gives (B, 1, S, d_rope), which broadcasts") from None
        got = _expect_tensor(got, want.shape, f"the scores for T = {T} queries and S = {S} keys")
        if _close(got, want):
            continue
        content = q_c @ k_c.transpose(-2, -1)  # (B, n_h, T, S)
        position = q_r @ k_r[:, None].transpose(-2, -1)  # (B, n_h, T, S)
        no_rotary = ("the rotary part is missing. Hint: add q_r . k_r (the shared rope key) to the content "
                     "score q_c . k_c")
        diagnose(got, [
            (content * (d_nope + d_rope) ** -0.5, no_rotary),
            (content * d_nope ** -0.5, no_rotary),
            (content + position, f"the scores are not scaled. Hint: multiply by 1/sqrt(d_nope + d_rope) = "
                                 f"1/sqrt({d_nope + d_rope})"),
            ((content + position) * d_nope ** -0.5, f"the scale is 1/sqrt(d_nope). Hint: a query/key head is "
                                                    f"d_nope + d_rope = {d_nope + d_rope} wide, so the scale "
                                                    "is 1/sqrt(d_nope + d_rope)"),
            (content * d_nope ** -0.5 + position * d_rope ** -0.5, "each part has its own scale. Hint: one "
                                                                   "score, one scale: (q_c . k_c + q_r . k_r) "
                                                                   "/ sqrt(d_nope + d_rope)"),
            (want.transpose(-2, -1) if T == S else None,
             "rows and columns are swapped. Hint: scores[..., i, j] = q_i . k_j (queries are rows)"),
        ])
        no_mask = ("a causal mask is applied, but 03.2 asks for raw scores, no mask. Hint: return "
                   "(q_c . k_c + q_r . k_r) / sqrt(d_nope + d_rope) for every (query, key) pair; the attention "
                   "that uses the scores masks them")
        bottom_right, top_left = causal_mask(T, S), torch.ones(T, S, dtype=torch.bool).tril()  # (T, S): True = seen
        diagnose(got, [((want, keep) if not keep.all() else None, no_mask) for keep in (bottom_right, top_left)],
                 same=lambda a, variant: _masked_as(a, *variant))
        raise _Fail(f"values differ from (q_c k_c^T + q_r k_r^T) / sqrt(d_nope + d_rope) for shapes "
                    f"(B, n_h, T, S) = {(B, n_h, T, S)}. Hint: compute both dot products per head, add, scale once")
    return f"matches the decoupled score on {len(shapes)} inputs"


# ---------------------------------------------------------------- 03.3
def reference_absorbed_content_scores(q_c: torch.Tensor, w_uk: torch.Tensor, c_kv: torch.Tensor) -> torch.Tensor:
    """q_C . k_C without expanding k_C: (W_UK^T q_C) . c_KV per head, (B, n_h, T, S); no scale."""
    q_latent = torch.einsum("bhtn,hnc->bhtc", q_c, w_uk)  # (B, n_h, T, d_c): W_UK,i^T q per head
    return q_latent @ c_kv[:, None].transpose(-2, -1)  # (B, n_h, T, d_c) @ (B, 1, d_c, S) -> (B, n_h, T, S)


@checker("03.3", "absorbed_content_scores")
def check_absorbed_content_scores(absorbed_content_scores: Answer) -> str:
    """Exercise 03.3: absorbed_content_scores(q_c, w_uk, c_kv) -> q_C . k_C per head, (B, n_h, T, S), by absorption."""

    g = torch.Generator().manual_seed(33)
    # (B, n_h, T, S, d_nope, d_c); the first case is square so a transposed W_UK still runs and can be named
    shapes = [(1, 3, 2, 5, 6, 6), (2, 2, 3, 4, 4, 7), (1, 4, 1, 6, 8, 3)]
    for B, n_h, T, S, d_nope, d_c in shapes:
        q_c = torch.randn(B, n_h, T, d_nope, generator=g)
        w_uk = torch.randn(n_h, d_nope, d_c, generator=g)
        c_kv = torch.randn(B, S, d_c, generator=g)
        want = reference_absorbed_content_scores(q_c, w_uk, c_kv)
        recorder = _ShapeRecorder()  # the tensors the answer builds: keys k_C would hold S rows of d_nope
        try:
            with recorder:
                got = absorbed_content_scores(q_c, w_uk, c_kv)
        except NotImplementedError:
            raise
        except _LearnerError as raised:  # a shape mismatch, most likely from the shared (head-less) operand
            if not isinstance(raised.error, RuntimeError):
                raise
            raise _Fail(f"your code raised RuntimeError: {raised.error}. Hint: q_c (B, n_h, T, d_nope), w_uk (n_h, d_nope, d_c), "
                        "c_kv (B, S, d_c) shared by all heads: c_kv[:, None] broadcasts over the heads") from None
        got = _expect_tensor(got, want.shape, f"the scores for q_c {tuple(q_c.shape)} and c_kv {tuple(c_kv.shape)}")
        if _close(got, want):
            # where S, d_nope and n_h d_nope differ from every other size, a tensor with an S axis and a d_nope
            # (or n_h d_nope) axis holds keys; all of them together as many as k_C has: the keys were expanded
            if len({S, d_nope, n_h * d_nope}) == 3 and {S, d_nope, n_h * d_nope}.isdisjoint({B, n_h, T, d_c}):
                built = _expansion(recorder.holding(S, {d_nope, n_h * d_nope}), B * n_h * S * d_nope)
                if built is not None:
                    raise _Fail(f"the scores are right, but your code builds the keys k_C of every head ({built}): "
                                "the expansion that absorption avoids, slow and memory-hungry at long context. "
                                "Hint: never build k_C; fold W_UK into the query instead, q_latent = "
                                "einsum('bhtn,hnc->bhtc', q_c, w_uk) (B, n_h, T, d_c), then "
                                "q_latent @ c_kv[:, None].transpose(-2, -1)")
            continue
        c_t = c_kv[:, None].transpose(-2, -1)  # (B, 1, d_c, S): shared by the heads
        scaled = ("the scores are scaled. Hint: return the raw content part q_C . k_C; the softmax "
                  "scale is applied later, to the sum of both parts")
        diagnose(got, [
            (torch.einsum("bhtn,hcn->bhtc", q_c, w_uk) @ c_t if d_nope == d_c else None,
             "W_UK is used the wrong way round. Hint: k_C = W_UK c with W_UK of shape (d_nope, d_c), so "
             "q . k_C = (W_UK^T q) . c: contract q_c with the d_nope axis, einsum('bhtn,hnc->bhtc')"),
            (torch.einsum("bhtn,nc->bhtc", q_c, w_uk[0]) @ c_t,
             "every head used head 0's W_UK. Hint: each head has its own W_UK,i: keep the head axis"),
            (torch.einsum("bhtn,gnc->bhtc", q_c, w_uk) @ c_t,
             "every head used the sum of all heads' W_UK. Hint: head h absorbs only w_uk[h]"),
            *[(want * factor, scaled) for factor in (d_nope ** -0.5, d_c ** -0.5)],
        ])
        raise _Fail(f"values differ from q_C . (W_UK c_KV) for (B, n_h, T, S) = {(B, n_h, T, S)}. Hint: "
                    "q_latent = einsum('bhtn,hnc->bhtc', q_c, w_uk), then q_latent @ c_kv[:, None].transpose(-2, -1)")
    return f"equals q_C . k_C with the keys never expanded, on {len(shapes)} inputs"


# ---------------------------------------------------------------- 03.4
def reference_yarn_softmax_scale(qk_head_dim: int, factor: float, mscale_all_dim: float) -> float:
    """1/sqrt(qk_head_dim) * mscale^2, mscale = 0.1 * mscale_all_dim * ln(factor) + 1 (1 when factor <= 1)."""
    return softmax_scale(qk_head_dim, {"type": "yarn", "factor": factor, "mscale_all_dim": mscale_all_dim})


@checker("03.4", "yarn_softmax_scale")
def check_yarn_softmax_scale(yarn_softmax_scale: Answer) -> str:
    """Exercise 03.4: yarn_softmax_scale(qk_head_dim, factor, mscale_all_dim) -> DeepSeek's softmax scale with YaRN."""

    # the last case is not stretched (factor <= 1, where mscale is 1); at factor 0.5 a formula without that guard
    # shows (at factor 1 it would not: ln 1 = 0)
    cases = [(192, 40, 1.0), (192, 40, 0.707), (128, 4, 1.0), (48, 16, 0.5), (192, 0.5, 1.0)]
    names = ["DeepSeek-V3 (192, factor 40, mscale_all_dim 1.0)", "DeepSeek-V2 (192, factor 40, mscale_all_dim 0.707)",
             "(128, factor 4, 1.0)", "(48, factor 16, 0.5)", "no stretch (192, factor 0.5)"]
    got = [_number_or_value(yarn_softmax_scale(*args)) for args in cases]
    want = [reference_yarn_softmax_scale(*args) for args in cases]

    def same(a, b) -> bool:
        return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(a, b, rel_tol=1e-6)

    def all_same(answers, values) -> bool:
        return all(same(a, b) for a, b in zip(answers, values, strict=True))

    if all_same(got, want):
        return f"right on {len(cases)} settings: DeepSeek-V3's scale is {want[0]:.5f}"
    i = next(i for i in range(len(cases)) if not same(got[i], want[i]))
    where = f"for {names[i]} you get {got[i]!r}; expected {want[i]:.6g}"

    def m(f, a, log=math.log, guard=True):
        return 0.1 * a * log(f) + 1 if f > 1 or not guard else 1.0

    mistakes = [
        (lambda d, f, a: d ** -0.5 * m(f, a), "mscale enters squared: scale = qk_head_dim^-0.5 * mscale^2 "
         "(YaRN's factor would multiply both the query and the key)"),
        (lambda d, f, a: d ** -0.5, "the YaRN correction is missing: multiply by mscale^2, "
         "mscale = 0.1 * mscale_all_dim * ln(factor) + 1"),
        (lambda d, f, a: d ** -0.5 * m(f, a, math.log10) ** 2, "use the natural logarithm (math.log), not log10"),
        (lambda d, f, a: d ** -0.5 * m(f, a, guard=False) ** 2, "mscale is 1 when factor <= 1: a context that is "
         "not stretched needs no correction, and 0.1 * mscale_all_dim * ln(factor) + 1 would shrink the scale "
         "(ln(factor) < 0)"),
        (lambda d, f, a: d ** -0.5 * m(f, 1.0) ** 2, "mscale_all_dim is ignored: "
         "mscale = 0.1 * mscale_all_dim * ln(factor) + 1"),
        (lambda d, f, a: d ** 0.5 * m(f, a) ** 2, "the base scale is 1/sqrt(qk_head_dim), not sqrt(qk_head_dim)"),
        (lambda d, f, a: m(f, a) ** 2 / d, "the base scale is 1/sqrt(qk_head_dim), not 1/qk_head_dim"),
    ]
    wrong = [([mistake(*args) for args in cases], hint) for mistake, hint in mistakes]
    diagnose(got, wrong, same=all_same, prefix=f"{where}. Hint: ")
    raise _Fail(f"{where}. Hint: qk_head_dim^-0.5 * (0.1 * mscale_all_dim * ln(factor) + 1)^2, "
                "and just qk_head_dim^-0.5 when factor <= 1")


__all__ = ["reference_rope_pairs", "check_rope_pairs", "reference_decoupled_scores", "check_decoupled_scores",
           "reference_absorbed_content_scores", "check_absorbed_content_scores", "reference_yarn_softmax_scale",
           "check_yarn_softmax_scale"]
