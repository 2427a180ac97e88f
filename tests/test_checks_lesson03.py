"""Lesson 03 checkers: the reference passes, known-wrong answers fail with their hint, stubs are NOT ATTEMPTED."""

import math

import numpy as np
import pytest
import torch
from learner import as_learner, assert_in_place_change_fails

from mlakit.attention import causal_mask
from mlakit.course import checks
from mlakit.course.checks import FAIL, NOT_ATTEMPTED, PASS
from mlakit.layers import RotaryEmbedding, yarn_mscale


def _not_done(*args, **kwargs):
    raise NotImplementedError


# ---------------------------------------------------------------- 03.1
def _rope(x, positions, base, exponent_step=2, halves=False, back_in_place=True, sign=1.0):
    d = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float32) * (exponent_step / 2) / d)  # (d/2,)
    angles = positions.float()[:, None] * inv_freq  # (T, d/2)
    cos, sin = angles.cos(), sign * angles.sin()
    x1, x2 = x.chunk(2, dim=-1) if halves else (x[..., 0::2], x[..., 1::2])
    r1, r2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    if halves or not back_in_place:
        return torch.cat((r1, r2), dim=-1)
    return torch.stack((r1, r2), dim=-1).flatten(-2)


def _complex_rope(x, positions, base):
    # DeepSeek's released code: view pairs as complex numbers and multiply by e^(i angle)
    d = x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
    freqs = torch.polar(torch.ones(len(positions), d // 2), positions.float()[:, None] * inv_freq)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2))
    return torch.view_as_real(xc * freqs).flatten(-2)


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_rope_pairs), PASS, "pairwise"),
    (lambda x, p, b: _rope(x, p, b), PASS, "pairwise"),
    (_complex_rope, PASS, "pairwise"),
    (lambda x, p, b: _rope(x.double(), p, b), PASS, "pairwise"),
    (lambda x, p, b: _rope(x, p, b, halves=True), FAIL, "halves convention"),
    (lambda x, p, b: _rope(x, p, b, back_in_place=False), FAIL, "not put back in place"),
    (lambda x, p, b: _rope(x, p, b, sign=-1.0), FAIL, "wrong way"),
    (lambda x, p, b: _rope(x, p, b, exponent_step=1), FAIL, "base^(-i/d)"),
    (lambda x, p, b: _rope(x, p + 1, b), FAIL, "off by one"),
    (lambda x, p, b: x, FAIL, "equals the input"),
    (lambda x, p, b: _rope(x, p, b) * 2, FAIL, "Hint"),
    (lambda x, p, b: x[..., :-1], FAIL, "shape"),
    (_not_done, NOT_ATTEMPTED, "rope_pairs"),
])
def test_check_rope_pairs(fn, status, phrase, capsys):
    result = checks.check_rope_pairs(fn)
    assert result.status == status, result.message
    assert phrase in result.message
    assert capsys.readouterr().out.strip() == result.line()


def _rope_in_place(x, positions, base):
    """Right values, but written into x: the caller's tensor changes."""
    x1, x2 = x[..., 0::2].clone(), x[..., 1::2].clone()
    d = x.shape[-1]
    angles = positions.float()[:, None] * base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # (T, d/2)
    x[..., 0::2] = x1 * angles.cos() - x2 * angles.sin()
    x[..., 1::2] = x1 * angles.sin() + x2 * angles.cos()
    return x


def test_rope_pairs_in_place_fails_with_the_in_place_hint():
    result = checks.check_rope_pairs(_rope_in_place)
    assert result.status == FAIL, result.message
    assert "changed its argument `x` in place" in result.message and "build a new tensor" in result.message


def test_reference_rope_pairs_is_the_rotation_by_hand():
    x, pos = torch.randn(2, 5, 8), torch.tensor([0, 3, 7, 20, 41])
    torch.testing.assert_close(checks.reference_rope_pairs(x, pos), _rope(x, pos, 10000.0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(checks.reference_rope_pairs(x, pos), RotaryEmbedding(8)(x, pos))


# ---------------------------------------------------------------- 03.2
def _parts(q_c, q_r, k_c, k_r):
    return q_c @ k_c.transpose(-2, -1), q_r @ k_r[:, None].transpose(-2, -1)


def _concatenated(q_c, q_r, k_c, k_r):
    k = torch.cat([k_c, k_r[:, None].expand(-1, q_c.shape[1], -1, -1)], dim=-1)  # (B, n_h, S, d_nope + d_rope)
    q = torch.cat([q_c, q_r], dim=-1)
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def _content_only(q_c, q_r, k_c, k_r):
    return _parts(q_c, q_r, k_c, k_r)[0] / math.sqrt(q_c.shape[-1])


def _unscaled(q_c, q_r, k_c, k_r):
    c, r = _parts(q_c, q_r, k_c, k_r)
    return c + r


def _nope_scale(q_c, q_r, k_c, k_r):
    c, r = _parts(q_c, q_r, k_c, k_r)
    return (c + r) / math.sqrt(q_c.shape[-1])


def _two_scales(q_c, q_r, k_c, k_r):
    c, r = _parts(q_c, q_r, k_c, k_r)
    return c / math.sqrt(q_c.shape[-1]) + r / math.sqrt(q_r.shape[-1])


def _no_head_axis(q_c, q_r, k_c, k_r):
    scale = (q_c.shape[-1] + q_r.shape[-1]) ** -0.5
    return (q_c @ k_c.transpose(-2, -1) + q_r @ k_r.transpose(-2, -1)) * scale


def _swapped(q_c, q_r, k_c, k_r):
    return checks.reference_decoupled_scores(q_c, q_r, k_c, k_r).transpose(-2, -1)


def _masked(q_c, q_r, k_c, k_r, fill=float("-inf"), top_left=False):
    """A causal mask the exercise does not ask for: bottom-right (causal_mask(T, S)) or top-left (tril)."""
    s = checks.reference_decoupled_scores(q_c, q_r, k_c, k_r)
    T, S = s.shape[-2:]
    keep = torch.ones(T, S, dtype=torch.bool).tril() if top_left else causal_mask(T, S)
    return s.masked_fill(~keep, fill)


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_decoupled_scores), PASS, "decoupled"),
    (_concatenated, PASS, "decoupled"),
    (lambda q_c, q_r, k_c, k_r: _concatenated(q_c.double(), q_r.double(), k_c.double(), k_r.double()), PASS,
     "decoupled"),
    (lambda *a: _masked(*a), FAIL, "raw scores, no mask"),
    (lambda *a: _masked(*a, fill=-1e9), FAIL, "raw scores, no mask"),
    (lambda *a: _masked(*a, top_left=True), FAIL, "raw scores, no mask"),
    (_content_only, FAIL, "rotary part is missing"),
    (lambda q_c, q_r, k_c, k_r: _parts(q_c, q_r, k_c, k_r)[0] / math.sqrt(q_c.shape[-1] + q_r.shape[-1]), FAIL,
     "rotary part is missing"),
    (_unscaled, FAIL, "not scaled"),
    (_nope_scale, FAIL, "1/sqrt(d_nope)."),
    (_two_scales, FAIL, "own scale"),
    (_no_head_axis, FAIL, "k_r[:, None]"),
    (_swapped, FAIL, "shape"),
    (_not_done, NOT_ATTEMPTED, "decoupled_scores"),
])
def test_check_decoupled_scores(fn, status, phrase):
    result = checks.check_decoupled_scores(fn)
    assert result.status == status, result.message
    assert phrase in result.message


def test_decoupled_scores_swapped_rows_are_named_when_square():
    def swapped_square_only(q_c, q_r, k_c, k_r):
        s = checks.reference_decoupled_scores(q_c, q_r, k_c, k_r)
        return s.transpose(-2, -1) if s.shape[-1] == s.shape[-2] else s

    result = checks.check_decoupled_scores(swapped_square_only)
    assert result.status == FAIL and "swapped" in result.message


# ---------------------------------------------------------------- 03.3
def _expanded(q_c, w_uk, c_kv):
    k_c = torch.einsum("bsc,hnc->bhsn", c_kv, w_uk)  # (B, n_h, S, d_nope): the naive way, for comparison
    return q_c @ k_c.transpose(-2, -1)


def _expanded_per_head(q_c, w_uk, c_kv):
    """The keys expanded one head at a time: (B, S, d_nope) per head."""
    return torch.stack([q_c[:, h] @ (c_kv @ w_uk[h].T).transpose(-2, -1) for h in range(w_uk.shape[0])], dim=1)


def _expanded_flat(q_c, w_uk, c_kv):
    """The keys of every head in one (B, S, n_h d_nope) product."""
    B, n_h, _, d_nope = q_c.shape
    k = (c_kv @ w_uk.reshape(n_h * d_nope, -1).T).view(B, -1, n_h, d_nope)  # (B, S, n_h, d_nope)
    return torch.einsum("bhtn,bshn->bhts", q_c, k)


def _absorbed(q_c, w_uk, c_kv, eq="bhtn,hnc->bhtc"):
    return torch.einsum(eq, q_c, w_uk) @ c_kv[:, None].transpose(-2, -1)


def _absorbed_per_head(q_c, w_uk, c_kv):
    """Absorbed, one head at a time: right, and no key is built."""
    return torch.stack([(q_c[:, h] @ w_uk[h]) @ c_kv.transpose(-2, -1) for h in range(w_uk.shape[0])], dim=1)


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_absorbed_content_scores), PASS, "never expanded"),
    (_absorbed_per_head, PASS, "never expanded"),
    (lambda q, w, c: _absorbed(q.double(), w.double(), c.double()), PASS, "never expanded"),
    (_expanded, FAIL, "builds the keys k_C of every head (a (1, 4, 6, 8) tensor)"),
    (_expanded_per_head, FAIL, "one slice at a time"),
    (_expanded_flat, FAIL, "builds the keys k_C of every head"),
    (lambda q, w, c: _absorbed(q, w, c, "bhtn,hcn->bhtc"), FAIL, "wrong way round"),
    (lambda q, w, c: torch.einsum("bhtn,nc->bhtc", q, w[0]) @ c[:, None].transpose(-2, -1), FAIL, "head 0"),
    (lambda q, w, c: _absorbed(q, w, c, "bhtn,gnc->bhtc"), FAIL, "sum of all heads"),
    (lambda q, w, c: _absorbed(q, w, c) / math.sqrt(q.shape[-1]), FAIL, "scaled"),
    (lambda q, w, c: _absorbed(q, w, c) / math.sqrt(w.shape[-1]), FAIL, "scores are scaled"),
    (lambda q, w, c: torch.einsum("bhtn,hnc->bhtc", q, w) @ c.transpose(-2, -1), FAIL, "c_kv[:, None]"),
    (lambda q, w, c: _absorbed(q, w, c) + 1, FAIL, "Hint"),
    (_not_done, NOT_ATTEMPTED, "absorbed_content_scores"),
])
def test_check_absorbed_content_scores(fn, status, phrase):
    result = checks.check_absorbed_content_scores(fn)
    assert result.status == status, result.message
    assert phrase in result.message


# ---------------------------------------------------------------- 03.4
def _scale(d, f, a, square=True, log=math.log, use_a=True, base=lambda d: d ** -0.5):
    m = 0.1 * (a if use_a else 1.0) * log(f) + 1 if f > 1 else 1.0
    return base(d) * (m * m if square else m)


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_yarn_softmax_scale), PASS, "0.13523"),
    (lambda d, f, a: _scale(d, f, a), PASS, "0.13523"),
    (lambda d, f, a: d ** -0.5 * yarn_mscale(f, a) ** 2, PASS, "0.13523"),
    (lambda d, f, a: _scale(d, f, a, square=False), FAIL, "squared"),
    (lambda d, f, a: d ** -0.5, FAIL, "correction is missing"),
    (lambda d, f, a: _scale(d, f, a, log=math.log10), FAIL, "natural logarithm"),
    (lambda d, f, a: d ** -0.5 * (0.1 * a * math.log(f) + 1) ** 2, FAIL, "mscale is 1 when factor <= 1"),
    (lambda d, f, a: np.float32(_scale(d, f, a)), PASS, "0.13523"),
    (lambda d, f, a: torch.tensor(_scale(d, f, a), dtype=torch.float64), PASS, "0.13523"),
    (lambda d, f, a: _scale(d, f, a, use_a=False), FAIL, "mscale_all_dim is ignored"),
    (lambda d, f, a: _scale(d, f, a, base=lambda d: d ** 0.5), FAIL, "not sqrt"),
    (lambda d, f, a: _scale(d, f, a, base=lambda d: 1 / d), FAIL, "not 1/qk_head_dim"),
    (lambda d, f, a: 0.1, FAIL, "Hint"),
    (_not_done, NOT_ATTEMPTED, "yarn_softmax_scale"),
])
def test_check_yarn_softmax_scale(fn, status, phrase):
    result = checks.check_yarn_softmax_scale(fn)
    assert result.status == status, result.message
    assert phrase in result.message


def test_lesson03_docstrings_name_their_exercise():
    names = ("rope_pairs", "decoupled_scores", "absorbed_content_scores", "yarn_softmax_scale")
    for k, name in enumerate(names, start=1):
        assert getattr(checks, f"check_{name}").__doc__.startswith(f"Exercise 03.{k}:")


# ---------------------------------------------------------------- in-place changes of the inputs
@pytest.mark.parametrize("check, reference, arg, name", [
    ("check_rope_pairs", "reference_rope_pairs", 1, "positions"),
    ("check_decoupled_scores", "reference_decoupled_scores", 3, "k_r"),
    ("check_absorbed_content_scores", "reference_absorbed_content_scores", 2, "c_kv"),
])
def test_an_answer_that_changes_its_input_in_place_fails(check, reference, arg, name):
    assert_in_place_change_fails(checks, check, reference, arg, name)
