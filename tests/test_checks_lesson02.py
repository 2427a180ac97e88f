"""Lesson 02 checkers: the reference passes, known-wrong answers fail with their hint, stubs are NOT ATTEMPTED."""


import pytest
import torch
from learner import as_learner, assert_in_place_change_fails

from mlakit.course import checks
from mlakit.course.checks import FAIL, NOT_ATTEMPTED, PASS
from mlakit.layers import RMSNorm
from mlakit.mla import LATENT_NORM_EPS


def _not_done(*args, **kwargs):
    raise NotImplementedError


def _rms(c, dims=-1):
    return c * torch.rsqrt(c.pow(2).mean(dims, keepdim=True) + LATENT_NORM_EPS)


# ---------------------------------------------------------------- 02.1
def _with_library_norm(h, w, gain):
    norm = RMSNorm(w.shape[0], LATENT_NORM_EPS)
    with torch.no_grad():
        norm.weight.copy_(gain)
        return norm(h @ w.T)


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_compress_kv), PASS, "matches"),
    (_with_library_norm, PASS, "matches"),
    (lambda h, w, gain: torch.nn.functional.rms_norm(h @ w.T, (w.shape[0],), gain, 1e-6), PASS, "matches"),
    (lambda h, w, gain: checks.reference_compress_kv(h.double(), w.double(), gain.double()), PASS, "matches"),
    (lambda h, w, gain: h @ w.T, FAIL, "not normalised"),
    (lambda h, w, gain: (h @ w.T) * gain, FAIL, "not normalised"),
    (lambda h, w, gain: _rms(h @ w.T), FAIL, "gain is missing"),
    (lambda h, w, gain: _rms(h @ w) * gain, FAIL, "untransposed"),
    (lambda h, w, gain: _rms((c := h @ w.T) - c.mean(-1, keepdim=True)) * gain, FAIL, "LayerNorm"),
    (lambda h, w, gain: _rms(h @ w.T, (0, 1, 2)) * gain, FAIL, "wrong axis"),
    (lambda h, w, gain: _rms(h @ w.T, (0,)) * gain, FAIL, "wrong axis"),
    (lambda h, w, gain: _rms(h @ w.T, (1,)) * gain, FAIL, "wrong axis"),
    (lambda h, w, gain: _rms(h @ w.T) * gain * 2, FAIL, "Hint"),
    (lambda h, w, gain: (h @ w.T)[..., :-1], FAIL, "shape"),
    (_not_done, NOT_ATTEMPTED, "compress_kv"),
])
def test_check_compress_kv(fn, status, phrase, capsys):
    result = checks.check_compress_kv(fn)
    assert result.status == status, result.message
    assert phrase in result.message
    assert capsys.readouterr().out.strip() == result.line()


# ---------------------------------------------------------------- 02.2
def _by_linear(c, w, n_h, d_nope):
    B, T, _ = c.shape
    kv = (c @ w.T).view(B, T, n_h, -1).transpose(1, 2)  # (B, n_h, T, d_nope + d_v)
    return kv[..., :d_nope], kv[..., d_nope:]


def _swapped(c, w, n_h, d_nope):
    k, v = checks.reference_expand_kv(c, w, n_h, d_nope)
    return v, k


def _halves(c, w, n_h, d_nope):
    B, T, _ = c.shape
    flat = c @ w.T
    k = flat[..., : n_h * d_nope].view(B, T, n_h, d_nope).transpose(1, 2)
    v = flat[..., n_h * d_nope:].view(B, T, n_h, -1).transpose(1, 2)
    return k, v


def _time_first(c, w, n_h, d_nope):
    k, v = checks.reference_expand_kv(c, w, n_h, d_nope)
    return k.transpose(1, 2), v.transpose(1, 2)


def _bad_values(c, w, n_h, d_nope):
    k, v = checks.reference_expand_kv(c, w, n_h, d_nope)
    return k, v * 2


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_expand_kv), PASS, "per head"),
    (_by_linear, PASS, "per head"),
    (lambda c, w, n_h, d_nope: checks.reference_expand_kv(c.double(), w.double(), n_h, d_nope), PASS, "per head"),
    (lambda c, w, n_h, d_nope: list(checks.reference_expand_kv(c, w, n_h, d_nope)), PASS, "per head"),
    (_swapped, FAIL, "swapped"),
    (_halves, FAIL, "grouped per head"),
    (_time_first, FAIL, "head axis before time"),
    (_bad_values, FAIL, "values are not"),
    (lambda c, w, n_h, d_nope: c, FAIL, "tuple"),
    (_not_done, NOT_ATTEMPTED, "expand_kv"),
])
def test_check_expand_kv(fn, status, phrase):
    result = checks.check_expand_kv(fn)
    assert result.status == status, result.message
    assert phrase in result.message


# ---------------------------------------------------------------- 02.3
def _svd(w):
    return torch.linalg.svd(w, full_matrices=False)


def _scale_in_up(w, r):
    U, S, Vh = _svd(w)
    return U[:, :r] * S[:r], Vh[:r]


def _no_singular_values(w, r):
    U, S, Vh = _svd(w)
    return U[:, :r], Vh[:r]


def _smallest(w, r):
    U, S, Vh = _svd(w)
    k = S.shape[0]
    return U[:, k - r:] * S[k - r:], Vh[k - r:]


def _vh_columns(w, r):
    U, S, Vh = _svd(w)
    return U[:, :r] * S[:r], Vh[:, :r].T


def _down_transposed(w, r):
    up, down = checks.reference_low_rank_factors(w, r)
    return up, down.T


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_low_rank_factors), PASS, "Eckart-Young"),
    (_scale_in_up, PASS, "Eckart-Young"),
    (lambda w, r: list(checks.reference_low_rank_factors(w, r)), PASS, "Eckart-Young"),
    (_no_singular_values, FAIL, "singular values are missing"),
    (_smallest, FAIL, "smallest"),
    (_vh_columns, FAIL, "first r ROWS"),
    (_down_transposed, FAIL, "(r, n)"),
    (lambda w, r: (w[:, :r], torch.eye(r, w.shape[1])), FAIL, "best possible"),
    (lambda w, r: w, FAIL, "tuple"),
    (_not_done, NOT_ATTEMPTED, "low_rank_factors"),
])
def test_check_low_rank_factors(fn, status, phrase):
    result = checks.check_low_rank_factors(fn)
    assert result.status == status, result.message
    assert phrase in result.message


# ---------------------------------------------------------------- 02.4
def _energy_rank(s, fraction, square=True, strict=False, count=True):
    e = s.pow(2) if square else s
    kept = e.cumsum(0) / e.sum()
    r = int((kept <= fraction).sum() if strict else (kept < fraction).sum()) + 1
    return r if count else r - 1


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_rank_for_energy), PASS, "spectra"),
    (lambda s, f: _energy_rank(s, f), PASS, "spectra"),
    (lambda s, f: torch.tensor(_energy_rank(s, f)), PASS, "spectra"),
    (lambda s, f: _energy_rank(s, f, square=False), FAIL, "SQUARED"),
    (lambda s, f: _energy_rank(s, f, count=False), FAIL, "count"),
    (lambda s, f: _energy_rank(s, f, strict=True), FAIL, "reaches"),
    (lambda s, f: float(_energy_rank(s, f)), FAIL, "return an int"),
    (lambda s, f: len(s), FAIL, "Hint"),
    (_not_done, NOT_ATTEMPTED, "rank_for_energy"),
])
def test_check_rank_for_energy(fn, status, phrase):
    result = checks.check_rank_for_energy(fn)
    assert result.status == status, result.message
    assert phrase in result.message


def test_lesson02_docstrings_name_their_exercise():
    for k, name in enumerate(("compress_kv", "expand_kv", "low_rank_factors", "rank_for_energy"), start=1):
        assert getattr(checks, f"check_{name}").__doc__.startswith(f"Exercise 02.{k}:")


# ---------------------------------------------------------------- in-place changes of the inputs
@pytest.mark.parametrize("check, reference, arg, name", [
    ("check_compress_kv", "reference_compress_kv", 0, "h"),
    ("check_expand_kv", "reference_expand_kv", 1, "w_ukv"),
    ("check_low_rank_factors", "reference_low_rank_factors", 0, "w"),
    ("check_rank_for_energy", "reference_rank_for_energy", 0, "s"),
])
def test_an_answer_that_changes_its_input_in_place_fails(check, reference, arg, name):
    assert_in_place_change_fails(checks, check, reference, arg, name)
