"""Checkers for the exercises of lesson 04: MLA inference (weight absorption and the latent cache).

The absorbed decode path of DeepSeek-V2 appendix C, in the layout of
:mod:`mlakit.mla`: W_UK (n_h, d_nope, d_c) and W_UV (n_h, d_v, d_c) per head,
cached rows [c_KV ; k_R] of d_c + d_rope numbers per token and layer.
"""

from __future__ import annotations

import math
import operator

import torch

from ...attention import causal_mask
from ...config import ModelConfig
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


# ---------------------------------------------------------------- 04.1
def reference_absorbed_attention(q_latent: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor,
                                 w_uv: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention over the cached latents as MQA, then W_UV: returns (B, n_h, T, d_v).

    q_latent (B, n_h, T, d_c), q_rope (B, n_h, T, d_rope), latent (B, S, d_c + d_rope)
    (the cached rows [c_KV ; k_R]), w_uv (n_h, d_v, d_c). The T queries are the
    last T of the S positions.
    """
    d_c, T, S = q_latent.shape[-1], q_latent.shape[-2], latent.shape[-2]
    q = torch.cat([q_latent, q_rope], dim=-1)  # (B, n_h, T, d_c + d_rope)
    scores = q @ latent[:, None].transpose(-2, -1) * scale  # (B, n_h, T, S): one key row shared by all heads
    scores = scores.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, n_h, T, S)
    o_latent = probs @ latent[:, None, :, :d_c]  # (B, n_h, T, d_c): sum over s of p_s c_s
    return torch.einsum("bhtc,hvc->bhtv", o_latent, w_uv)  # (B, n_h, T, d_v): W_UV once, after the sum


def _absorbed_variant(q_latent, q_rope, latent, w_uv, scale, *, rope=True, mask=True, softmax_dim=-1,
                      w_uv_eq="bhtc,hvc->bhtv"):
    """The reference with one thing changed: the mistakes the checker recognises.

    ``mask``: True for the causal mask aligned bottom-right (query i at position S - T + i), False for none,
    "top_left" for the mask of queries at positions 0 .. T-1 (query i sees keys 0 .. i only).
    """
    d_c, T, S = q_latent.shape[-1], q_latent.shape[-2], latent.shape[-2]
    scores = q_latent @ latent[:, None, :, :d_c].transpose(-2, -1)  # (B, n_h, T, S)
    if rope:
        scores = scores + q_rope @ latent[:, None, :, d_c:].transpose(-2, -1)
    scores = scores * scale
    if mask == "top_left":
        scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), float("-inf"))
    elif mask:
        scores = scores.masked_fill(~causal_mask(T, S), float("-inf"))
    probs = torch.softmax(scores, dim=softmax_dim)
    return torch.einsum(w_uv_eq, probs @ latent[:, None, :, :d_c], w_uv)


@checker("04.1", "absorbed_attention")
def check_absorbed_attention(absorbed_attention: Answer) -> str:
    """Exercise 04.1: absorbed_attention(q_latent, q_rope, latent, w_uv, scale) -> (B, n_h, T, d_v)."""

    g = torch.Generator().manual_seed(41)
    # (B, n_h, T, S, d_c, d_rope, d_v): n_h, S and d_v differ from every other size in the first two cases,
    # so a per-head value tensor (n_h, S, d_v) can be recognised; the last case has d_v == d_c
    cases = [(2, 3, 1, 7, 10, 4, 6), (1, 3, 2, 7, 10, 4, 6), (1, 2, 3, 5, 8, 4, 8)]
    expanded = None
    for B, n_h, T, S, d_c, d_rope, d_v in cases:
        q_lat = torch.randn(B, n_h, T, d_c, generator=g)
        q_rope = torch.randn(B, n_h, T, d_rope, generator=g)
        latent = torch.randn(B, S, d_c + d_rope, generator=g)
        w_uv = torch.randn(n_h, d_v, d_c, generator=g)
        scale = 1 / math.sqrt(2 * d_c)  # not 1/sqrt of any width the inputs show, so a guessed scale is caught
        want = reference_absorbed_attention(q_lat, q_rope, latent, w_uv, scale)
        recorder = _ShapeRecorder()
        try:
            with recorder:
                got = absorbed_attention(q_lat, q_rope, latent, w_uv, scale)
        except NotImplementedError:  # a RuntimeError too: the stub, reported as not attempted
            raise
        except _LearnerError as raised:  # almost always a shape mismatch: say which widths go where
            if not isinstance(raised.error, RuntimeError):
                raise
            raise _Fail(f"your code raised RuntimeError: {raised.error}. Hint: the key is the whole cached row "
                        f"(d_c + d_rope = {d_c + d_rope} wide here), the value only its first d_c = {d_c} "
                        f"columns (k_R is not a value), and W_UV[h] has shape (d_v, d_c) = ({d_v}, {d_c})") from None
        got = _expect_tensor(got, want.shape, f"the output for T={T} queries over S={S} cached rows")
        if _close(got, want):
            # where S, d_v and n_h d_v differ from every other size, a tensor with an S axis and a d_v (or n_h d_v)
            # axis holds values of cached tokens; one of them holding every head, or all of them together as many
            # values as every head has (a loop over heads): the cache was expanded per head
            values = {S, d_v, n_h * d_v}
            if expanded is None and len(values) == 3 and values.isdisjoint({B, n_h, T, d_c, d_rope, d_c + d_rope}):
                expanded = _expansion(recorder.holding(S, {d_v, n_h * d_v}), B * n_h * S * d_v)
                one = next((s for s in recorder.shapes if {n_h, S, d_v} <= set(s) and math.prod(s) >= n_h * S * d_v),
                           None)
                expanded = f"a {one} tensor" if one is not None else expanded
            continue
        args = (q_lat, q_rope, latent, w_uv)
        wrong_axis = ("the softmax runs over the wrong axis. Hint: each query's weights sum to 1 over "
                      "the S cached positions, the last axis of the scores")
        diagnose(got, [
            (_absorbed_variant(*args, scale, rope=False),
             "the scores leave out the rotary part. Hint: each cached row is [c_KV ; k_R]; the score "
             "is q_latent . c_KV + q_rope . k_R, i.e. [q_latent ; q_rope] against the whole row"),
            (_absorbed_variant(*args, 1.0),
             "the scores are not scaled. Hint: multiply q . k by `scale` before the softmax"),
            *[(_absorbed_variant(*args, wrong), f"the scores are scaled by {name}, the width of the latent. Hint: "
                                                "use the `scale` argument: absorption must not change the scores, "
                                                "so the scale stays that of the naive path, 1/sqrt(d_nope + d_rope)")
              for wrong, name in (((d_c + d_rope) ** -0.5, "1/sqrt(d_c + d_rope)"), (d_c ** -0.5, "1/sqrt(d_c)"))],
            (_absorbed_variant(*args, scale, mask=False) if T > 1 else None,
             f"with T={T} queries the earlier queries see later positions. Hint: query i sits at "
             "position S - T + i; mask the scores with mlakit.attention.causal_mask(T, S)"),
            (_absorbed_variant(*args, scale, mask="top_left") if T < S else None,
             "the causal mask is aligned top-left, as if the queries sat at positions 0 .. T-1 (query i sees "
             f"only keys 0 .. i). Hint: the T={T} queries are the LAST T of the S={S} cached positions: query i "
             "sits at position S - T + i and sees keys 0 .. S - T + i; mlakit.attention.causal_mask(T, S) "
             "aligns the mask that way (bottom-right)"),
            *[(_absorbed_variant(*args, scale, softmax_dim=dim), wrong_axis) for dim in (-2, 1)],
            (_absorbed_variant(*args, scale, w_uv_eq="bhtc,hcv->bhtv") if d_v == d_c else None,
             "W_UV is applied along the wrong axis (a transpose). Hint: W_UV[h] has shape (d_v, d_c): "
             "v = W_UV[h] o, i.e. einsum('bhtc,hvc->bhtv', o_latent, w_uv)"),
            (_absorbed_variant(*args, scale, w_uv_eq="bhtc,gvc->bhtv"),
             "every head used the sum of all heads' W_UV. Hint: head h's latent output goes "
             "through its own W_UV[h]: keep the head letter in both operands"),
        ])
        raise _Fail(f"values differ from the reference for T={T} queries over S={S} cached rows. Hint: scores = "
                    "[q_latent ; q_rope] . latent_row * scale, causal mask, softmax over S, o = sum p c_KV "
                    "(first d_c columns), then W_UV[h] o for each head")
    if expanded is not None and expanded.startswith("a "):
        return (f"matches the reference on {len(cases)} inputs, but your code builds {expanded}: values "
                "for every head and cached token, the expansion the absorbed path avoids (right, but slow at "
                "long context). Try: sum p c over the cache first, then apply W_UV once per head")
    if expanded is not None:  # a loop over heads
        return (f"matches the reference on {len(cases)} inputs, but your code builds the values of every head and "
                f"cached token ({expanded}), the expansion the absorbed path avoids (right, but slow at long "
                "context). Try: sum p c over the cache first, then apply W_UV once per head")
    return f"matches the reference on {len(cases)} inputs, without expanding the cache per head"


# ---------------------------------------------------------------- 04.2
def reference_merge_output(w_uv: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """W_UV merged into W_O: W_OV[h] = W_O[:, h d_v:(h+1) d_v] W_UV[h], (n_h, d, d_c).

    w_uv (n_h, d_v, d_c); w_o (d, n_h d_v), ``o_proj.weight`` (an nn.Linear weight is (out, in)).
    Then y = sum over h of W_OV[h] o_latent[h], o_latent = sum_s p_s c_s per head.
    """
    n_h, d_v, _ = w_uv.shape
    w_o_heads = w_o.view(w_o.shape[0], n_h, d_v)  # (d, n_h, d_v): the columns of head h are its block
    return torch.einsum("dhv,hvc->hdc", w_o_heads, w_uv)  # (n_h, d, d_c)


@checker("04.2", "merge_output")
def check_merge_output(merge_output: Answer) -> str:
    """Exercise 04.2: merge_output(w_uv, w_o) -> (n_h, d, d_c), W_UV of each head merged into its block of W_O."""

    g = torch.Generator().manual_seed(42)
    # (n_h, d_v, d_c, d); the first case has d = n_h * d_v and d_v = d_c, so row/column and transpose
    # mix-ups still run and can be named
    shapes = [(4, 3, 3, 12), (2, 5, 7, 9), (3, 4, 6, 8)]
    for n_h, d_v, d_c, d in shapes:
        w_uv = torch.randn(n_h, d_v, d_c, generator=g)
        w_o = torch.randn(d, n_h * d_v, generator=g)
        want = reference_merge_output(w_uv, w_o)
        got = merge_output(w_uv, w_o)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (n_h, d_c, d):
            raise _Fail(f"your result has shape {tuple(got.shape)} = (n_h, d_c, d); expected (n_h, d, d_c). "
                        "Hint: W_OV[h] maps a head's latent output (d_c) to the model width (d), like W_O[:, block] "
                        "W_UV[h]: (d, d_v) @ (d_v, d_c)")
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (d, d_c):
            raise _Fail(f"your result has shape {tuple(got.shape)} = (d, d_c): one matrix for all heads. Hint: "
                        "each head keeps its own merged matrix, because each head has its own latent output "
                        "o_latent[h]; return (n_h, d, d_c)")
        got = _expect_tensor(got, want.shape, f"W_OV for w_uv {tuple(w_uv.shape)} and w_o {tuple(w_o.shape)}")
        if _close(got, want):
            continue
        w_o_heads = w_o.view(d, n_h, d_v)  # (d, n_h, d_v)
        diagnose(got, [
            (torch.einsum("dvh,hvc->hdc", w_o.view(d, d_v, n_h), w_uv),
             "the heads' blocks of W_O are taken interleaved (view(d, d_v, n_h)). Hint: o_proj's "
             "input is the heads side by side, head h in columns h*d_v ... (h+1)*d_v - 1: "
             "w_o.view(d, n_h, d_v)"),
            (torch.einsum("hvd,hvc->hdc", w_o.view(n_h, d_v, d), w_uv) if d == n_h * d_v else None,
             "you split W_O into blocks of rows. Hint: o_proj.weight has shape (d, n_h * d_v) "
             "(out, in): head h owns a block of COLUMNS, w_o[:, h*d_v:(h+1)*d_v]"),
            (torch.einsum("dhv,hcv->hdc", w_o_heads, w_uv) if d_v == d_c else None,
             "W_UV[h] is used transposed. Hint: W_UV[h] has shape (d_v, d_c) and maps a latent to a "
             "value; W_OV[h] = W_O[:, block] @ W_UV[h]"),
            (torch.einsum("dhv,gvc->hdc", w_o_heads, w_uv),
             "each head's block of W_O was multiplied by the sum of all heads' W_UV. Hint: block h "
             "goes with W_UV[h] only: keep the head letter in both operands"),
        ])
        raise _Fail(f"values differ from W_O[:, block h] @ W_UV[h] for w_uv {tuple(w_uv.shape)} and w_o "
                    f"{tuple(w_o.shape)}. Hint: einsum('dhv,hvc->hdc', w_o.view(d, n_h, d_v), w_uv)")
    return f"matches W_O[:, block h] W_UV[h] on {len(shapes)} inputs"


# ---------------------------------------------------------------- 04.3
def reference_latent_cache_bytes(config: ModelConfig, seq_len: int, batch_size: int = 1,
                                 bytes_per_element: float = 2) -> float:
    """(kv_lora_rank + qk_rope_head_dim) x layers x tokens x sequences x bytes per element."""
    per_layer = config.kv_lora_rank + config.qk_rope_head_dim  # [c_KV ; k_R], shared by all heads
    return per_layer * config.num_hidden_layers * seq_len * batch_size * bytes_per_element


def _latent_mistakes():
    """(what the mistake computes, hint), each from (config, seq_len, batch, bytes)."""
    return [
        (lambda c, t, b, e: (c.kv_lora_rank + c.qk_rope_head_dim) * t * b * e,
         "that is one layer's cache: every layer caches its own latents, multiply by num_hidden_layers"),
        (lambda c, t, b, e: c.kv_lora_rank * c.num_hidden_layers * t * b * e,
         "the rotary key is missing: each row is [c_KV ; k_R], kv_lora_rank + qk_rope_head_dim numbers"),
        (lambda c, t, b, e: c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim)
         * c.num_hidden_layers * t * b * e,
         "that is the expanded per-head keys and values; MLA caches only the latent and the shared rope key"),
        (lambda c, t, b, e: 2 * c.num_attention_heads * c.qk_nope_head_dim * c.num_hidden_layers * t * b * e,
         "that is multi-head attention's cache (2 n_h d_h); MLA caches kv_lora_rank + qk_rope_head_dim"),
        (lambda c, t, b, e: (c.kv_lora_rank + c.num_attention_heads * c.qk_rope_head_dim) * c.num_hidden_layers
         * t * b * e,
         "k_R is counted once per head, but it is ONE key shared by all heads: count it once"),
        (lambda c, t, b, e: 2 * (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * t * b * e,
         "that counts the row twice (as K and as V): the same latent serves as both, it is stored once"),
        (lambda c, t, b, e: (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * t * e,
         "that is one sequence's cache: multiply by batch_size"),
        (lambda c, t, b, e: (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * t * b,
         "that counts elements, not bytes: multiply by bytes_per_element"),
        (lambda c, t, b, e: (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers * t * b * e * 8,
         "that is bits: bytes_per_element is already in bytes"),
    ]


@checker("04.3", "latent_cache_bytes")
def check_latent_cache_bytes(latent_cache_bytes: Answer) -> str:
    """Exercise 04.3: latent_cache_bytes(config, seq_len, batch_size, bytes_per_element) -> bytes of MLA's cache."""

    custom = ModelConfig.from_preset("nano", kv_lora_rank=64, qk_rope_head_dim=8, num_hidden_layers=3)
    cases = [
        (ModelConfig.from_preset("deepseek-v3"), 128 * 1024, 1, 2),
        (ModelConfig.from_preset("deepseek-v2-lite"), 4096, 4, 2),
        (ModelConfig.from_preset("nano"), 100, 3, 4),
        (custom, 10, 2, 1),
        (ModelConfig.from_preset("deepseek-v2"), 128 * 1024, 1, 0.75),  # V2's ~6-bit cache
    ]
    names = ["deepseek-v3 at 128k in bf16", "deepseek-v2-lite, 4 x 4096 tokens in bf16",
             "nano, 3 x 100 tokens in fp32", "a nano variant (d_c 64, d_rope 8, 3 layers), 2 x 10 tokens in fp8",
             "deepseek-v2 at 128k with 6 bits (0.75 bytes) per element"]
    got = [_number_or_value(latent_cache_bytes(*args)) for args in cases]  # a NumPy or 0-d tensor number too
    want = [reference_latent_cache_bytes(*args) for args in cases]

    def same(a, b) -> bool:
        return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(a, b, rel_tol=1e-9)

    def all_same(answers, values) -> bool:
        return all(same(a, b) for a, b in zip(answers, values, strict=True))

    if all_same(got, want):
        return f"right on {len(cases)} configurations, DeepSeek-V3 at 128k and V2's 6-bit cache included"
    i = next(i for i in range(len(cases)) if not same(got[i], want[i]))
    where = f"for {names[i]} you get {got[i]!r}; expected {want[i]:,.0f}"
    wrong = [([mistake(*args) for args in cases], hint) for mistake, hint in _latent_mistakes()]
    diagnose(got, wrong, same=all_same, prefix=f"{where}. Hint: ")
    raise _Fail(f"{where}. Hint: (kv_lora_rank + qk_rope_head_dim) x num_hidden_layers x seq_len x batch_size "
                "x bytes_per_element")


# ---------------------------------------------------------------- 04.4
def reference_context_that_fits(config: ModelConfig, budget_bytes: int, batch_size: int = 1,
                                bytes_per_element: int = 2) -> int:
    """The longest context (tokens per sequence) whose latent cache for batch_size sequences fits in budget_bytes."""
    per_position = reference_latent_cache_bytes(config, 1, batch_size, bytes_per_element)  # one token, every sequence
    return int(budget_bytes // per_position)


@checker("04.4", "context_that_fits")
def check_context_that_fits(context_that_fits: Answer) -> str:
    """Exercise 04.4: context_that_fits(config, budget_bytes, batch_size, bytes_per_element) -> whole tokens."""

    v3, nano = ModelConfig.from_preset("deepseek-v3"), ModelConfig.from_preset("nano")
    nano_row = reference_latent_cache_bytes(nano, 1, 1, 4)  # bytes per token, fp32
    cases = [
        (v3, 80 * 10**9, 1, 2),  # one 80 GB GPU, all of it for the cache
        (v3, 141 * 10**9, 8, 1),  # one H200, fp8, eight sequences
        (nano, 100 * nano_row, 1, 4),  # exactly 100 tokens' worth
        (nano, 100 * 2 * nano_row - 1, 2, 4),  # one byte short of 100 tokens for 2 sequences
        (nano, nano_row // 2, 1, 4),  # not even one token
    ]
    for config, budget, batch, nbytes in cases:
        want = reference_context_that_fits(config, budget, batch, nbytes)
        got = context_that_fits(config, budget, batch, nbytes)
        if isinstance(got, torch.Tensor) or type(got).__module__ == "numpy":  # a NumPy or 0-d tensor number
            got = _number_or_value(got)
        where = f"for a budget of {budget:,} bytes, batch {batch}, {nbytes} byte(s) per element"
        if isinstance(got, bool) or not isinstance(got, int):
            if isinstance(got, float) and got == want:
                raise _Fail(f"{where} you return the float {got!r}. Hint: a context is a whole number of "
                            "tokens: return an int (// or int(...))")
            if isinstance(got, float):
                raise _Fail(f"{where} you return {got!r}, not a whole number of tokens. Hint: round down "
                            "with // : a partly stored token is of no use")
            raise _Fail(f"{where} you return a {type(got).__name__}. Hint: return the number of tokens as an int")
        if got == want:
            continue
        used = reference_latent_cache_bytes(config, got, batch, nbytes)
        exact = reference_latent_cache_bytes(config, want, batch, nbytes) == budget
        row, L = config.kv_lora_rank + config.qk_rope_head_dim, config.num_hidden_layers
        diagnose(got, [
            (want + 1 if used > budget else None,
             f"{where} you return {got:,} tokens, whose cache needs {used:,.0f} bytes, more than the "
             "budget. Hint: round down (//), not up"),
            (want - 1 if exact else None,
             f"{where} you return {got:,}; {want:,} tokens fill the budget exactly and still fit. "
             "Hint: a cache of exactly budget_bytes fits: use <= (or plain //)"),
            (reference_context_that_fits(config, budget, 1, nbytes) if batch > 1 else None,
             f"{where} you return {got:,} tokens, one sequence's worth. Hint: the {batch} sequences "
             "of the batch each need their own cache: divide by batch_size too"),
            (int(budget // (row * batch * nbytes)),
             f"{where} you return {got:,}, a context for one layer. Hint: every one of the "
             f"{L} layers caches each token"),
            (int(budget // (config.kv_lora_rank * L * batch * nbytes)),
             f"{where} you return {got:,}. Hint: each cached row also holds the rope key: "
             "kv_lora_rank + qk_rope_head_dim numbers per token and layer"),
        ], same=operator.eq)
        raise _Fail(f"{where} you return {got!r}; expected {want:,}. Hint: budget_bytes // (bytes of one "
                    "token of every sequence over all layers)")
    return f"right on {len(cases)} budgets, exact fits and one-byte-short budgets included"


__all__ = ["reference_absorbed_attention", "check_absorbed_attention", "reference_merge_output", "check_merge_output",
           "reference_latent_cache_bytes", "check_latent_cache_bytes", "reference_context_that_fits",
           "check_context_that_fits"]
