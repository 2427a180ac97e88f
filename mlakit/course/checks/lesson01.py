"""Checkers for the exercises of lesson 01: attention and the KV cache."""

from __future__ import annotations

import operator

import torch

from ...attention import causal_mask
from ._core import Answer, _close, _expect_tensor, _Fail, _LearnerError, checker, diagnose


def reference_causal_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scaled attention scores with a causal mask: q k^T / sqrt(d), -inf where key j is after query i."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # (..., T, S)
    return scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))


@checker("01.1", "causal_scores")
def check_causal_scores(causal_scores: Answer) -> str:
    """Exercise 01.1: causal_scores(q, k) -> (B, H, T, T) scaled scores, -inf above the diagonal."""

    g = torch.Generator().manual_seed(11)
    shapes = [(2, 3, 5, 8), (1, 1, 4, 16), (1, 2, 1, 4)]
    for shape in shapes:
        q, k = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        want = reference_causal_scores(q, k)
        got = _expect_tensor(causal_scores(q.clone(), k.clone()), want.shape, "the scores")
        if _close(got, want):
            continue
        d = shape[-1]
        upper = ~causal_mask(shape[-2], shape[-2])
        lower = ~upper
        if upper.any() and (got[..., upper] <= -1e4).all() and _close(got[..., lower], want[..., lower]):
            continue  # a large negative number instead of -inf gives the same softmax
        T = shape[-2]
        diagonal = torch.eye(T, dtype=torch.bool)  # (T, T): j = i
        next_key = torch.ones(T, T, dtype=torch.bool).triu(1) & ~torch.ones(T, T, dtype=torch.bool).triu(2)  # j = i + 1
        diagnose(got, [
            (torch.softmax(want, dim=-1), "these are softmax weights (each row sums to 1), not scores. Hint: "
                                          "return the masked, scaled scores; the softmax comes after"),
            (want.masked_fill(upper, 0.0), "the masked positions are 0. Hint: use -inf, so softmax gives them "
                                           "weight exactly 0"),
            (want.masked_fill(diagonal, float("-inf")),
             "the diagonal is masked too, so a query cannot see its own key (j = i). Hint: mask only j > i: "
             "torch.ones(T, T, dtype=torch.bool).triu(1) (diagonal=1), not triu(0)"),
            (reference_causal_scores(q, k).masked_fill(next_key, 0.0) + (q @ k.transpose(-2, -1) / d ** 0.5)
             .masked_fill(~next_key, 0.0) if T > 1 else None,
             "key j = i + 1 is visible: each query sees one key too many. Hint: the mask starts right above "
             "the diagonal, triu(diagonal=1); triu(2) leaves the next key unmasked"),
        ])
        if upper.any() and torch.isfinite(got[..., upper]).all():
            i, j = upper.nonzero()[0].tolist()
            raise _Fail(f"position ({i}, {j}) is not masked. Hint: a query may not see later keys; "
                        "fill the scores above the diagonal with float('-inf') (torch.tril or masked_fill)")
        raw = q @ k.transpose(-2, -1)  # (..., T, T), unscaled
        diagnose(got[..., lower], [  # the visible scores (j <= i) only
            (raw[..., lower], f"the scores are not scaled. Hint: divide q k^T by sqrt(d) = sqrt({d})"),
            (raw[..., lower] / d, f"the scores are divided by d = {d}. Hint: the scale is 1/sqrt(d), not 1/d"),
        ])
        diagnose(got, [
            (reference_causal_scores(k, q),
             "rows and columns are swapped. Hint: scores[i, j] = q_i . k_j, i.e. q @ k.transpose(-2, -1)"),
        ])
        raise _Fail(f"values differ from the reference for q and k of shape {shape}. "
                    "Hint: scores = q @ k.transpose(-2, -1) / sqrt(d), then mask positions j > i")
    return f"matches the reference on {len(shapes)} inputs"


def reference_append_kv(cache_k, cache_v, length, k_new, v_new):
    """Write k_new, v_new (B, H, T, d) at [length, length + T) of the preallocated cache; return the filled part."""
    end = length + k_new.shape[-2]
    if end > cache_k.shape[-2]:
        raise ValueError(f"cache full: {length} + {k_new.shape[-2]} > {cache_k.shape[-2]}")
    cache_k[..., length:end, :] = k_new
    cache_v[..., length:end, :] = v_new
    return cache_k[..., :end, :], cache_v[..., :end, :], end


@checker("01.2", "append_kv", may_modify=(0, 1, "cache_k", "cache_v"))  # it writes into the cache
def check_append_kv(append_kv: Answer) -> str:
    """Exercise 01.2: append_kv(cache_k, cache_v, length, k_new, v_new) -> (keys, values, new_length)."""

    g = torch.Generator().manual_seed(12)
    B, H, max_len, d = 2, 3, 8, 4
    ck, cv = torch.zeros(B, H, max_len, d), torch.zeros(B, H, max_len, d)
    rk, rv = ck.clone(), cv.clone()
    length = ref_len = 0
    for step, t in enumerate((3, 1, 2, 2)):  # the last step fills the cache exactly to capacity
        k, v = torch.randn(B, H, t, d, generator=g), torch.randn(B, H, t, d, generator=g)
        try:
            out = append_kv(ck, cv, length, k, v)
        except _LearnerError as raised:
            if length + t == max_len and isinstance(raised.error, (ValueError, RuntimeError, IndexError)):
                raise _Fail(f"appending {t} token(s) at length {length} fills the cache of {max_len} positions "
                            f"exactly, and your code raised {type(raised.error).__name__}: {raised.error}. Hint: "
                            "the cache is full only when length + T > capacity (>, not >=)") from None
            raise
        if not (isinstance(out, tuple) and len(out) == 3):
            raise _Fail("return a tuple (keys, values, new_length)")
        keys, values, length = out
        wk, wv, ref_len = reference_append_kv(rk, rv, ref_len, k, v)
        if length != ref_len:
            raise _Fail(f"after appending {t} token(s) at step {step + 1} the length is {length}; expected {ref_len}. "
                        "Hint: new_length = length + number of new positions (k_new.shape[-2])")
        if isinstance(keys, torch.Tensor) and tuple(keys.shape) == (B, H, max_len, d) and ref_len < max_len:
            raise _Fail("you returned the whole buffer. Hint: return only the filled part, cache_k[..., :new_length, :]")
        keys = _expect_tensor(keys, wk.shape, f"keys after step {step + 1}")
        values = _expect_tensor(values, wv.shape, f"values after step {step + 1}")
        if _close(keys, wk) and not _close(values, wv):
            diagnose(values, [
                (wk, "the values are the keys. Hint: write v_new into cache_v and return cache_v's filled part"),
            ])
            raise _Fail("the keys are right but the values are not. Hint: treat cache_v exactly like cache_k")
        if not _close(keys, wk):
            diagnose(keys[..., :t, :], [  # the first t positions
                (k if step > 0 else None, "the new keys were written at position 0, over the earlier ones. "
                                          "Hint: write at positions [length, length + T)"),
            ])
            raise _Fail(f"the keys after step {step + 1} differ from the expected ones. "
                        "Hint: cache_k[..., length:length + T, :] = k_new")
    for length, t in ((2, 1), (1, 2)):  # a full cache, then one that has room for one token of two: one past the end
        try:
            append_kv(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), length, torch.ones(1, 1, t, 2),
                      torch.ones(1, 1, t, 2))
        except _LearnerError as raised:
            if not isinstance(raised.error, (ValueError, RuntimeError, IndexError)):
                raise
        else:
            raise _Fail(f"appending {t} token(s) at length {length} to a cache of 2 positions did not raise. Hint: "
                        "raise ValueError when length + T > cache_k.shape[-2] (slicing past the end silently "
                        "writes nothing)")
    return "appends, returns the filled part, tracks the length and refuses to overflow"


def reference_gqa_cache_bytes(num_layers, num_kv_heads, head_dim, seq_len, batch_size, bytes_per_element):
    """2 (K and V) x layers x KV heads x head_dim x tokens x batch x bytes per element."""
    return 2 * num_layers * num_kv_heads * head_dim * seq_len * batch_size * bytes_per_element


@checker("01.3", "gqa_cache_bytes")
def check_gqa_cache_bytes(gqa_cache_bytes: Answer) -> str:
    """Exercise 01.3: the cache size formula for grouped-query attention."""
    # Common mistakes, each as what it would compute from the right answer and the arguments.
    mistakes = [
        (lambda w, a: w // 2, "the cache holds keys AND values: count both"),
        (lambda w, a: w // a[5], "that counts elements, not bytes: multiply by bytes_per_element"),
        (lambda w, a: w * 8, "that is bits: bytes_per_element is already in bytes"),
        (lambda w, a: w // a[0], "that is one layer's worth: every layer has its own cache"),
        (lambda w, a: w // a[4], "that is one sequence's worth: multiply by batch_size"),
    ]

    cases = [(80, 8, 128, 131072, 1, 2), (32, 8, 128, 4096, 4, 2), (2, 1, 16, 10, 3, 4), (95, 8, 128, 1, 1, 2)]
    got = [gqa_cache_bytes(*args) for args in cases]
    want = [reference_gqa_cache_bytes(*args) for args in cases]
    if got == want:
        return f"right on {len(cases)} configurations, Llama-3-70B at 128k included"
    wrong = next(i for i in range(len(cases)) if got[i] != want[i])
    where = f"for (layers, kv_heads, head_dim, seq_len, batch, bytes) = {cases[wrong]} you get {got[wrong]!r}; expected {want[wrong]:,}"
    wrong = [([mistake(w, a) for w, a in zip(want, cases, strict=True)], hint) for mistake, hint in mistakes]
    diagnose(got, wrong, same=operator.eq, prefix=f"{where}. Hint: ")
    raise _Fail(f"{where}. Hint: 2 x layers x kv_heads x head_dim x seq_len x batch x bytes_per_element")


def reference_repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, d) -> (B, n_kv * n_rep, T, d): KV head h serves query heads h*n_rep ... h*n_rep + n_rep - 1."""
    return x.repeat_interleave(n_rep, dim=1)


@checker("01.4", "repeat_kv")
def check_repeat_kv(repeat_kv: Answer) -> str:
    """Exercise 01.4: expand shared KV heads to the query heads for GQA."""

    g = torch.Generator().manual_seed(14)
    for n_kv, n_rep in ((2, 3), (1, 4), (4, 1)):
        x = torch.randn(2, n_kv, 5, 6, generator=g)
        want = reference_repeat_kv(x, n_rep)
        got = _expect_tensor(repeat_kv(x.clone(), n_rep), want.shape, f"repeat_kv(x, {n_rep}) for {n_kv} KV heads")
        if _close(got, want, atol=0, rtol=0):
            continue
        diagnose(got, [  # exactly: repeating copies values
            (x.repeat(1, n_rep, 1, 1), "the heads come out in the order 0,1,0,1,... . Hint: consecutive query "
                                       "heads share a KV head, so the order is 0,0,1,1,...: use repeat_interleave "
                                       "along dim 1"),
        ], same=lambda a, b: _close(a, b, atol=0, rtol=0))
        raise _Fail(f"wrong values for {n_kv} KV heads repeated {n_rep} times. Hint: x.repeat_interleave(n_rep, dim=1)")
    return "expands KV heads in the right order"


__all__ = ["reference_causal_scores", "check_causal_scores", "reference_append_kv", "check_append_kv", "reference_gqa_cache_bytes", "check_gqa_cache_bytes", "reference_repeat_kv", "check_repeat_kv"]
