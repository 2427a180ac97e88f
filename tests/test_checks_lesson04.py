"""Lesson 04 checkers: the reference passes, known-wrong answers fail with their hint, stubs are not attempted."""

import math

import numpy as np
import pytest
import torch
from learner import as_learner, assert_in_place_change_fails

from mlakit import ModelConfig
from mlakit.attention import causal_mask
from mlakit.course import checks
from mlakit.course.checks import FAIL, NOT_ATTEMPTED, PASS
from mlakit.course.checks.lesson04 import _absorbed_variant
from mlakit.mla import MultiHeadLatentAttention
from mlakit.viz.dashboard import longest_context


def _not_done(*args, **kwargs):
    raise NotImplementedError


# ---------------------------------------------------------------- 04.1
def _w_uv_first(q_lat, q_rope, latent, w_uv, scale):
    """Right but slow: expands the values of every head and cached token before the weighted sum."""
    d_c, T, S = q_lat.shape[-1], q_lat.shape[-2], latent.shape[-2]
    scores = torch.cat([q_lat, q_rope], -1) @ latent[:, None].transpose(-2, -1) * scale
    probs = torch.softmax(scores.masked_fill(~causal_mask(T, S), float("-inf")), -1)  # (B, n_h, T, S)
    v = torch.einsum("bsc,hvc->bhsv", latent[..., :d_c], w_uv)  # (B, n_h, S, d_v): the expansion
    return probs @ v


def _w_uv_per_head(q_lat, q_rope, latent, w_uv, scale):
    """Right but slow: expands the values head by head, a (B, S, d_v) tensor per head."""
    d_c, T, S = q_lat.shape[-1], q_lat.shape[-2], latent.shape[-2]
    scores = torch.cat([q_lat, q_rope], -1) @ latent[:, None].transpose(-2, -1) * scale
    probs = torch.softmax(scores.masked_fill(~causal_mask(T, S), float("-inf")), -1)  # (B, n_h, T, S)
    return torch.stack([probs[:, h] @ (latent[..., :d_c] @ w_uv[h].T) for h in range(w_uv.shape[0])], dim=1)


def _absorbed_per_head(q_lat, q_rope, latent, w_uv, scale):
    """Right and absorbed, W_UV applied one head at a time after the weighted sum: no expansion."""
    d_c, T, S = q_lat.shape[-1], q_lat.shape[-2], latent.shape[-2]
    scores = torch.cat([q_lat, q_rope], -1) @ latent[:, None].transpose(-2, -1) * scale
    probs = torch.softmax(scores.masked_fill(~causal_mask(T, S), float("-inf")), -1)
    o_latent = probs @ latent[:, None, :, :d_c]  # (B, n_h, T, d_c)
    return torch.stack([o_latent[:, h] @ w_uv[h].T for h in range(w_uv.shape[0])], dim=1)


def _top_left_mask(q_lat, q_rope, latent, w_uv, scale):
    return _absorbed_variant(q_lat, q_rope, latent, w_uv, scale, mask="top_left")


def _no_rope(q_lat, q_rope, latent, w_uv, scale):
    return _absorbed_variant(q_lat, q_rope, latent, w_uv, scale, rope=False)


def _no_scale(q_lat, q_rope, latent, w_uv, scale):
    return _absorbed_variant(q_lat, q_rope, latent, w_uv, 1.0)


def _latent_width_scale(q_lat, q_rope, latent, w_uv, scale):
    return _absorbed_variant(q_lat, q_rope, latent, w_uv, latent.shape[-1] ** -0.5)


def _no_mask(q_lat, q_rope, latent, w_uv, scale):
    return _absorbed_variant(q_lat, q_rope, latent, w_uv, scale, mask=False)


def _softmax_over_heads(q_lat, q_rope, latent, w_uv, scale):
    return _absorbed_variant(q_lat, q_rope, latent, w_uv, scale, softmax_dim=1)


def _w_uv_transposed(q_lat, q_rope, latent, w_uv, scale):
    if w_uv.shape[-1] != w_uv.shape[-2]:  # runs only where the shapes allow it, like the real mistake
        return checks.reference_absorbed_attention(q_lat, q_rope, latent, w_uv, scale)
    return _absorbed_variant(q_lat, q_rope, latent, w_uv, scale, w_uv_eq="bhtc,hcv->bhtv")


def _w_uv_summed_heads(q_lat, q_rope, latent, w_uv, scale):
    return _absorbed_variant(q_lat, q_rope, latent, w_uv, scale, w_uv_eq="bhtc,gvc->bhtv")


def _value_with_rope(q_lat, q_rope, latent, w_uv, scale):
    T, S = q_lat.shape[-2], latent.shape[-2]
    scores = torch.cat([q_lat, q_rope], -1) @ latent[:, None].transpose(-2, -1) * scale
    probs = torch.softmax(scores.masked_fill(~causal_mask(T, S), float("-inf")), -1)
    return torch.einsum("bhtc,hvc->bhtv", probs @ latent[:, None], w_uv)  # (.., d_c + d_rope) against d_c: error


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_absorbed_attention), PASS, "without expanding"),
    (_w_uv_first, PASS, "the expansion the absorbed path avoids"),
    (_w_uv_per_head, PASS, "the values of every head and cached token ((2, 7, 6) tensors, one slice at a time)"),
    (_absorbed_per_head, PASS, "without expanding"),
    (lambda *a: checks.reference_absorbed_attention(*[t.double() for t in a[:4]], a[4]), PASS, "without expanding"),
    (_top_left_mask, FAIL, "aligned top-left"),
    (_no_rope, FAIL, "rotary part"),
    (_no_scale, FAIL, "not scaled"),
    (_latent_width_scale, FAIL, "1/sqrt(d_c + d_rope)"),
    (_no_mask, FAIL, "causal_mask"),
    (_softmax_over_heads, FAIL, "wrong axis. Hint: each query's weights"),
    (lambda *a: _absorbed_variant(*a, softmax_dim=-2), FAIL, "wrong axis. Hint: each query's weights"),
    (lambda q_lat, q_rope, latent, w_uv, scale: _absorbed_variant(q_lat, q_rope, latent, w_uv, q_lat.shape[-1] ** -0.5),
     FAIL, "scaled by 1/sqrt(d_c),"),
    (_w_uv_transposed, FAIL, "W_UV is applied along the wrong axis"),
    (_w_uv_summed_heads, FAIL, "sum of all heads' W_UV"),
    (_value_with_rope, FAIL, "the value only its first d_c"),
    (lambda *a: a[0], FAIL, "shape"),
    (_not_done, NOT_ATTEMPTED, "absorbed_attention"),
])
def test_check_absorbed_attention(fn, status, phrase):
    result = checks.check_absorbed_attention(fn)
    assert result.status == status, result.message
    assert phrase in result.message


@torch.no_grad()
def _absorbed_inputs():
    """A nano MLA layer, an input x (2, 5, d) and what its absorbed path is built from."""
    cfg = ModelConfig.from_preset("nano", n_routed_experts=0, num_nextn_predict_layers=0)
    layer = MultiHeadLatentAttention(cfg).eval()
    x, pos = torch.randn(2, 5, cfg.hidden_size), torch.arange(5)
    q_nope, q_rope = layer.query(x, pos)
    w_uk, w_uv = layer.up_weights()
    q_latent = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)  # (B, n_h, T, d_c)
    return layer, x, q_nope, q_rope, q_latent, layer.latent(x, pos), w_uv


def test_reference_absorbed_attention_is_the_library_path():
    layer, x, q_nope, q_rope, q_latent, latent, w_uv = _absorbed_inputs()
    with torch.no_grad():
        ours = checks.reference_absorbed_attention(q_latent, q_rope, latent, w_uv, layer.scale)
        torch.testing.assert_close(ours, layer.attend_absorbed(q_nope, q_rope, latent))
        torch.testing.assert_close(ours, layer.attend_naive(q_nope, q_rope, latent))


# ---------------------------------------------------------------- 04.2
def _heads_interleaved(w_uv, w_o):
    n_h, d_v, _ = w_uv.shape
    return torch.einsum("dvh,hvc->hdc", w_o.view(w_o.shape[0], d_v, n_h), w_uv)


def _row_blocks(w_uv, w_o):
    n_h, d_v, _ = w_uv.shape
    if w_o.shape[0] != w_o.shape[1]:  # the mistake only runs where W_O is square
        return checks.reference_merge_output(w_uv, w_o)
    return torch.einsum("hvd,hvc->hdc", w_o.view(n_h, d_v, w_o.shape[0]), w_uv)


def _w_uv_transposed_merge(w_uv, w_o):
    n_h, d_v, d_c = w_uv.shape
    if d_v != d_c:
        return checks.reference_merge_output(w_uv, w_o)
    return torch.einsum("dhv,hcv->hdc", w_o.view(w_o.shape[0], n_h, d_v), w_uv)


def _summed_heads_merge(w_uv, w_o):
    n_h, d_v, _ = w_uv.shape
    return torch.einsum("dhv,gvc->hdc", w_o.view(w_o.shape[0], n_h, d_v), w_uv)


def _loop_over_heads(w_uv, w_o):
    n_h, d_v, _ = w_uv.shape
    return torch.stack([w_o[:, h * d_v:(h + 1) * d_v] @ w_uv[h] for h in range(n_h)])


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_merge_output), PASS, "matches"),
    (_loop_over_heads, PASS, "matches"),
    (lambda w_uv, w_o: checks.reference_merge_output(w_uv.double(), w_o.double()), PASS, "matches"),
    (lambda w_uv, w_o: checks.reference_merge_output(w_uv, w_o).transpose(1, 2), FAIL, "(n_h, d_c, d)"),
    (_heads_interleaved, FAIL, "interleaved"),
    (_row_blocks, FAIL, "blocks of rows"),
    (_w_uv_transposed_merge, FAIL, "W_UV[h] is used transposed"),
    (_summed_heads_merge, FAIL, "sum of all heads' W_UV"),
    (lambda w_uv, w_o: checks.reference_merge_output(w_uv, w_o).sum(0), FAIL, "one matrix for all heads"),
    (lambda w_uv, w_o: checks.reference_merge_output(w_uv, w_o)[:, :-1], FAIL, "dimension 1 differs"),
    (lambda w_uv, w_o: 2 * checks.reference_merge_output(w_uv, w_o), FAIL, "Hint: einsum"),
    (_not_done, NOT_ATTEMPTED, "merge_output"),
])
def test_check_merge_output(fn, status, phrase):
    result = checks.check_merge_output(fn)
    assert result.status == status, result.message
    assert phrase in result.message


def test_merged_output_gives_the_layer_output():
    layer, x, _, q_rope, q_latent, latent, w_uv = _absorbed_inputs()
    with torch.no_grad():
        eye = torch.eye(layer.d_c).expand(layer.n_heads, -1, -1)  # W_UV = I: the latent output
        o_latent = checks.reference_absorbed_attention(q_latent, q_rope, latent, eye, layer.scale)
        y = torch.einsum("bhtc,hdc->btd", o_latent, checks.reference_merge_output(w_uv, layer.o_proj.weight))
        torch.testing.assert_close(y, layer(x, mode="absorbed"))


# ---------------------------------------------------------------- 04.3
def _numpy_number(value):
    """A NumPy scalar, as a learner computing with NumPy returns: np.int64 for a whole number, else np.float64."""
    return np.int64(value) if float(value).is_integer() else np.float64(value)


def _mla(c):
    return c.kv_lora_rank + c.qk_rope_head_dim


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_latent_cache_bytes), PASS, "DeepSeek-V3"),
    (lambda *a: _numpy_number(checks.reference_latent_cache_bytes(*a)), PASS, "DeepSeek-V3"),
    (lambda *a: torch.tensor(checks.reference_latent_cache_bytes(*a), dtype=torch.float64), PASS, "DeepSeek-V3"),
    (lambda c, t, b, e: _mla(c) * t * b * e, FAIL, "one layer's cache"),
    (lambda c, t, b, e: c.kv_lora_rank * c.num_hidden_layers * t * b * e, FAIL, "rotary key is missing"),
    (lambda c, t, b, e: c.num_attention_heads * (c.qk_head_dim + c.v_head_dim) * c.num_hidden_layers * t * b * e,
     FAIL, "expanded per-head"),
    (lambda c, t, b, e: 2 * c.num_attention_heads * c.head_dim * c.num_hidden_layers * t * b * e, FAIL,
     "multi-head attention's cache"),
    (lambda c, t, b, e: (c.kv_lora_rank + c.num_attention_heads * c.qk_rope_head_dim) * c.num_hidden_layers
     * t * b * e, FAIL, "shared by all heads"),
    (lambda c, t, b, e: 2 * _mla(c) * c.num_hidden_layers * t * b * e, FAIL, "counts the row twice"),
    (lambda c, t, b, e: _mla(c) * c.num_hidden_layers * t * e, FAIL, "batch_size"),
    (lambda c, t, b, e: _mla(c) * c.num_hidden_layers * t * b, FAIL, "not bytes"),
    (lambda c, t, b, e: 8 * _mla(c) * c.num_hidden_layers * t * b * e, FAIL, "that is bits"),
    (lambda c, t, b, e: 3, FAIL, "(kv_lora_rank + qk_rope_head_dim) x num_hidden_layers"),
    (lambda c, t, b, e: str(_mla(c)), FAIL, "expected"),
    (_not_done, NOT_ATTEMPTED, "latent_cache_bytes"),
])
def test_check_latent_cache_bytes(fn, status, phrase):
    result = checks.check_latent_cache_bytes(fn)
    assert result.status == status, result.message
    assert phrase in result.message


def test_reference_latent_cache_bytes_is_the_library_formula():
    from mlakit.kvcache import cache_bytes

    for preset in ("deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "nano"):
        cfg = ModelConfig.from_preset(preset)
        assert checks.reference_latent_cache_bytes(cfg, 4096, 3, 2) == cache_bytes(cfg, 4096, 3, "bf16")
    assert checks.reference_latent_cache_bytes(ModelConfig.from_preset("deepseek-v3"), 1) == 70_272


# ---------------------------------------------------------------- 04.4
def _per_token(c, b, e):
    return _mla(c) * c.num_hidden_layers * b * e


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_context_that_fits), PASS, "exact fits"),
    (lambda *a: np.int64(checks.reference_context_that_fits(*a)), PASS, "exact fits"),
    (lambda *a: torch.tensor(checks.reference_context_that_fits(*a)), PASS, "exact fits"),
    (lambda c, m, b, e: math.ceil(m / _per_token(c, b, e)), FAIL, "round down (//), not up"),
    (lambda c, m, b, e: (m - 1) // _per_token(c, b, e), FAIL, "use <="),
    (lambda c, m, b, e: m // _per_token(c, 1, e), FAIL, "divide by batch_size"),
    (lambda c, m, b, e: m // (_mla(c) * b * e), FAIL, "for one layer"),
    (lambda c, m, b, e: m // (c.kv_lora_rank * c.num_hidden_layers * b * e), FAIL, "rope key"),
    (lambda c, m, b, e: m / _per_token(c, b, e), FAIL, "not a whole number of tokens"),
    (lambda c, m, b, e: float(m // _per_token(c, b, e)), FAIL, "return an int"),
    (lambda c, m, b, e: str(m), FAIL, "as an int"),
    (lambda c, m, b, e: 7, FAIL, "budget_bytes //"),
    (_not_done, NOT_ATTEMPTED, "context_that_fits"),
])
def test_check_context_that_fits(fn, status, phrase):
    result = checks.check_context_that_fits(fn)
    assert result.status == status, result.message
    assert phrase in result.message


def test_context_that_fits_agrees_with_the_dashboard():
    v3 = ModelConfig.from_preset("deepseek-v3")
    expected = longest_context(v3, "bf16", 4, 80)["max_context_cache_only"]
    assert checks.reference_context_that_fits(v3, 80 * 10**9, 4, 2) == expected


def test_lesson04_results_parse_and_name_their_exercise():
    for check, ref, number in ((checks.check_absorbed_attention, checks.reference_absorbed_attention, "04.1"),
                               (checks.check_merge_output, checks.reference_merge_output, "04.2"),
                               (checks.check_latent_cache_bytes, checks.reference_latent_cache_bytes, "04.3"),
                               (checks.check_context_that_fits, checks.reference_context_that_fits, "04.4")):
        assert check.__doc__.startswith(f"Exercise {number}:")
        m = checks.RESULT_LINE.match(check(as_learner(ref)).line())
        assert m and m["exercise"] == number and m["status"] == PASS


# ---------------------------------------------------------------- in-place changes of the inputs
@pytest.mark.parametrize("check, reference, arg, name", [
    ("check_absorbed_attention", "reference_absorbed_attention", 2, "latent"),
    ("check_merge_output", "reference_merge_output", 1, "w_o"),
])
def test_an_answer_that_changes_its_input_in_place_fails(check, reference, arg, name):
    assert_in_place_change_fails(checks, check, reference, arg, name)
