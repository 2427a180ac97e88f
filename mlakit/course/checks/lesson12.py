"""Checkers for the exercises of lesson 12: GPU kernels (the cost of an MLA decode step, the online softmax,
and the log-sum-exp merge of split-KV decoding).

The references follow FlashAttention's online softmax (Milakov & Gimelshein 2018, arXiv 1805.02867; Dao et
al. 2022, arXiv 2205.14135), flash-decoding's split-KV merge and FlashMLA's absorbed decode (one latent
head of d_c + d_rope read once for every query head; REFERENCE.md §6), and agree with the library:
:func:`mlakit.kernels.mla_decode` (whose torch reference runs exactly this merge with ``num_splits``) and its
Triton kernel. They are written here independently, so the tests can compare them with the library. Each
checker runs the learner's function on cases chosen so that every typical mistake gives a different answer,
and :func:`diagnose` names the one the learner's answer equals.
"""

from __future__ import annotations

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


# ---------------------------------------------------------------- 12.1
def _decode_cost(n_heads, kv_lora_rank, rope_dim, context, batch, bytes_per_element, *, flop_per_mac=2,
                 value=True, per_head=False, rope_bytes=True, in_bytes=True):
    """(FLOPs, bytes) of one absorbed MLA decode step of one layer, or one typical mistake of them."""
    width = kv_lora_rank + rope_dim  # the key: [c_KV ; k_R]
    macs = n_heads * context * (width + (kv_lora_rank if value else 0))  # per sequence: scores, then p @ c_KV
    flops = batch * flop_per_mac * macs
    row = width if rope_bytes else kv_lora_rank
    elements = batch * context * row * (n_heads if per_head else 1)
    return flops, elements * (bytes_per_element if in_bytes else 1)


def reference_mla_decode_cost(n_heads: int, kv_lora_rank: int, rope_dim: int, context: int, batch: int,
                              bytes_per_element: int) -> tuple[int, int]:
    """(FLOPs, bytes) of one absorbed MLA decode step of ONE layer's attention, for ``batch`` sequences.

    Each sequence has ``context`` cached rows of ``kv_lora_rank + rope_dim`` numbers, read once (every
    query head shares them); each of its ``n_heads`` query heads scores every row (a dot product of
    kv_lora_rank + rope_dim) and sums the rows' first kv_lora_rank numbers weighted by the softmax. A
    multiply-add is 2 FLOPs. Bytes: the cache only (the query and output are a few KB).
    """
    return _decode_cost(n_heads, kv_lora_rank, rope_dim, context, batch, bytes_per_element)


_COST_MISTAKES = [
    (dict(per_head=True), "the cache is counted once per query head. Hint: that is multi-head attention's "
                          "cost; in MLA's absorbed decode every head reads the SAME latent row, so the cache is "
                          "read once per sequence: batch x context x (kv_lora_rank + rope_dim) x bytes"),
    (dict(flop_per_mac=1), "the FLOPs are half of what they should be: you counted multiply-adds. Hint: a "
                           "multiply-add is 2 FLOPs (the convention of every TFLOPS figure)"),
    (dict(value=False), "the FLOPs cover the scores only. Hint: add the weighted sum of the values, "
                        "p @ c_KV: n_heads x context x kv_lora_rank multiply-adds per sequence"),
    (dict(rope_bytes=False), "the bytes leave out the rope key. Hint: a cached row is [c_KV ; k_R], "
                             "kv_lora_rank + rope_dim numbers (576 for V3), and the kernel reads all of it"),
    (dict(in_bytes=False), "the second number counts elements, not bytes. Hint: multiply by bytes_per_element "
                           "(2 for bf16)"),
]


@checker("12.1", "mla_decode_cost")
def check_mla_decode_cost(mla_decode_cost: Answer) -> str:
    """Exercise 12.1: mla_decode_cost(n_heads, kv_lora_rank, rope_dim, context, batch, bytes_per_element)
    -> (FLOPs, bytes) of one layer's absorbed decode attention."""
    cases = [
        (128, 512, 64, 4096, 1, 2),  # DeepSeek-V3, one sequence, bf16
        (16, 512, 64, 1000, 8, 1),  # V2-Lite's heads, an fp8 cache
        (8, 64, 16, 37, 3, 4),  # the nano preset in float32
    ]
    for args in cases:
        want = reference_mla_decode_cost(*args)
        got = _expect_sequence(mla_decode_cost(*args), 2, f"mla_decode_cost{args}")
        got = tuple(_as_number(v, f"each number of mla_decode_cost{args}") for v in got)
        if all(abs(g - w) <= 1e-9 * w for g, w in zip(got, want, strict=True)):
            continue
        where = f"for n_heads, kv_lora_rank, rope_dim, context, batch, bytes = {args}: "
        diagnose(got, [(_decode_cost(*args, **switches), hint) for switches, hint in _COST_MISTAKES],
                 same=lambda a, b: all(abs(x - y) <= 1e-9 * max(abs(y), 1) for x, y in zip(a, b, strict=True)),
                 prefix=where)
        if got == want[::-1]:
            raise _Fail(where + "the two numbers are swapped. Hint: return (FLOPs, bytes), in that order")
        raise _Fail(f"{where}got {got}; expected {want}. Hint: FLOPs = batch x 2 x n_heads x context x "
                    "((kv_lora_rank + rope_dim) + kv_lora_rank); bytes = batch x context x (kv_lora_rank + "
                    "rope_dim) x bytes_per_element")
    flops, nbytes = reference_mla_decode_cost(*cases[0])
    return (f"matches the reference on {len(cases)} cases: V3 at 4k context reads {nbytes / 1e6:.2f} MB per layer "
            f"and does {flops / nbytes:.0f} FLOPs per byte read")


# ---------------------------------------------------------------- 12.2
def _online_step(m, l, acc, scores, values, *, rescale_acc=True, rescale_l=True, keep_old_max=True,
                 subtract_max=True):
    """One step of the online softmax, or one typical mistake of it (keyword switches)."""
    m, l, acc, scores, values = (t.to(torch.float64) for t in (m, l, acc, scores, values))
    block_max = scores.amax(dim=-1)
    m_new = torch.maximum(m, block_max) if keep_old_max else block_max
    if not subtract_max:
        m_new = torch.zeros_like(m_new)
    alpha = torch.exp(m - m_new)  # exp(-inf) = 0 on the first step
    p = torch.exp(scores - m_new[:, None])  # (n, b)
    l_new = (l * alpha if rescale_l else l) + p.sum(dim=-1)
    acc_new = (acc * alpha[:, None] if rescale_acc else acc) + p @ values
    return m_new, l_new, acc_new


def reference_online_softmax_step(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor, scores: torch.Tensor,
                                  values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block of the online softmax: the state (m, l, acc) after the scores and values of one more block.

    ``m`` (n,) is the running maximum score of each of n queries (-inf before the first block), ``l`` (n,)
    the running sum of exp(score - m), ``acc`` (n, d) the running sum of exp(score - m) * value; ``scores``
    (n, b) are the queries' scores against the b keys of the block, ``values`` (b, d) the keys' values.
    With m' = max(m, max of the block): l' = l exp(m - m') + sum exp(scores - m'),
    acc' = acc exp(m - m') + exp(scores - m') @ values. After the last block the output is acc / l.
    Returned in float64.
    """
    return _online_step(m, l, acc, scores, values)


_ONLINE_MISTAKES = [
    (dict(rescale_acc=False), "the accumulator is not rescaled when the maximum grows. Hint: everything in acc "
                              "was weighted by exp(score - m_old); multiply it by exp(m_old - m_new) before "
                              "adding the new block"),
    (dict(rescale_l=False), "the running sum l is not rescaled when the maximum grows. Hint: l holds "
                            "sum exp(score - m_old); multiply it by exp(m_old - m_new) before adding the block"),
    (dict(rescale_acc=False, rescale_l=False), "neither l nor acc is rescaled when the maximum grows. Hint: "
                                               "multiply both by exp(m_old - m_new) before adding the block"),
    (dict(subtract_max=False), "the scores are exponentiated without subtracting the running maximum (m is not "
                               "tracked). Hint: m_new = max(m_old, max of the block) and exp(scores - m_new): "
                               "exp of a score in the hundreds overflows to inf"),
    (dict(keep_old_max=False), "the new maximum is the block's alone. Hint: m_new = max(m_old, max of the block), "
                               "or a later block with smaller scores lowers m and the old terms overflow"),
]


def _online_cases():
    g = torch.Generator().manual_seed(12)
    cases = []
    for n, d, blocks, spread in ((3, 4, [2, 3, 1], 1.0), (2, 5, [4, 4], 30.0), (1, 3, [1, 2, 2], 3.0)):
        scores = [torch.randn(n, b, generator=g) * spread for b in blocks]
        if spread > 10:
            scores[0] = scores[0] - 200.0  # first block small, second far larger: the max jumps by hundreds
            scores[1] = scores[1] + 500.0
        values = [torch.randn(b, d, generator=g) for b in blocks]
        cases.append((scores, values))
    return cases


@checker("12.2", "online_softmax_step")
def check_online_softmax_step(online_softmax_step: Answer) -> str:
    """Exercise 12.2: online_softmax_step(m, l, acc, scores, values) -> (m, l, acc) after one more block."""
    cases = _online_cases()
    for c, (score_blocks, value_blocks) in enumerate(cases):
        n, d = score_blocks[0].shape[0], value_blocks[0].shape[1]
        m, l, acc = torch.full((n,), float("-inf")), torch.zeros(n), torch.zeros(n, d)
        ref = (m.double(), l.double(), acc.double())
        for i, (scores, values) in enumerate(zip(score_blocks, value_blocks, strict=True)):
            want = _online_step(*ref, scores, values)
            got = _expect_sequence(online_softmax_step(m, l, acc, scores, values), 3,
                                   f"online_softmax_step on block {i}")
            got = tuple(_expect_tensor(t, w.shape, f"{name} after block {i}")
                        for t, w, name in zip(got, want, ("m", "l", "acc"), strict=True))
            where = f"case {c + 1}, block {i} (scores of size {tuple(scores.shape)}): "
            if any(bool((~torch.isfinite(t)).any()) for t in got[1:]):
                raise _Fail(where + "l or acc holds inf or NaN. Hint: subtract the new running maximum before "
                            "exponentiating, exp(scores - m_new): with scores in the hundreds exp overflows")
            if not all(_close(a, b, atol=1e-6, rtol=1e-6) for a, b in zip(got, want, strict=True)):
                diagnose(got, [(_online_step(*ref, scores, values, **switches), hint)
                               for switches, hint in _ONLINE_MISTAKES],
                         same=lambda a, b: all(_close(x, y, atol=1e-6, rtol=1e-6) for x, y in zip(a, b, strict=True)),
                         prefix=where)
                names = [name for name, a, b in zip(("m", "l", "acc"), got, want, strict=True)
                         if not _close(a, b, atol=1e-6, rtol=1e-6)]
                raise _Fail(f"{where}{', '.join(names)} differ from the reference. Hint: m_new = max(m, "
                            "scores.amax(-1)); alpha = exp(m - m_new); p = exp(scores - m_new[:, None]); "
                            "l_new = l * alpha + p.sum(-1); acc_new = acc * alpha[:, None] + p @ values")
            m, l, acc = (t.to(torch.float32) for t in got)
            ref = want
        full = torch.cat(score_blocks, dim=1).double()
        exact = torch.softmax(full, dim=-1) @ torch.cat(value_blocks).double()
        if not _close(acc.double() / l.double()[:, None], exact, atol=1e-5, rtol=1e-4):
            raise _Fail(f"case {c + 1}: acc / l after the last block is not softmax(scores) @ values")
    return (f"matches the reference on {len(cases)} sequences of blocks, one with scores jumping by 700: acc / l "
            "equals softmax(scores) @ values")


# ---------------------------------------------------------------- 12.3
def _merge(outs, lses, *, how="lse"):
    """The merge of split outputs, or one typical mistake of it."""
    outs, lses = outs.to(torch.float64), lses.to(torch.float64)
    if how == "mean":
        return outs.mean(dim=0)
    if how == "best":
        return outs.gather(0, lses.argmax(dim=0)[None, :, None].expand(1, *outs.shape[1:]))[0]
    if how == "naive":  # weights exp(lse) / sum exp(lse), no max subtracted: overflows
        w = torch.exp(lses)
        return (w[..., None] * outs).sum(0) / w.sum(0)[:, None]
    if how == "unnormalised":
        top = lses.amax(dim=0)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return (torch.exp(lses - top)[..., None] * outs).sum(0)
    top = lses.amax(dim=0)  # (n,)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a query with no rows at all: zeros
    w = torch.exp(lses - top)  # (S, n): 0 for an empty split
    total = w.sum(dim=0)
    return (w[..., None] * outs).sum(dim=0) / torch.where(total > 0, total, torch.ones_like(total))[:, None]


def reference_merge_splits(outs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """Merge split-KV partial results: (n, d) from ``outs`` (S, n, d) and ``lses`` (S, n).

    Split s computed, for each of n queries, the softmax-weighted average o_s of its own rows and their
    log-sum-exp lse_s = log sum exp(scores) (natural log; -inf for a split with no rows, whose o_s is 0).
    The whole softmax is out = sum_s exp(lse_s - LSE) o_s with LSE = logsumexp_s lse_s: subtract the
    largest lse before exponentiating. A query whose splits are all empty gets zeros. Float64.
    """
    return _merge(outs, lses)


_MERGE_MISTAKES = [
    (dict(how="mean"), "the splits are averaged with equal weights. Hint: a split holding more (or larger) "
                       "scores carries more of the softmax's mass: weight o_s by exp(lse_s - LSE)"),
    (dict(how="best"), "only the split with the largest log-sum-exp is kept. Hint: every split contributes, "
                       "weighted by exp(lse_s - LSE), with LSE = logsumexp over the splits"),
    (dict(how="unnormalised"), "the weights exp(lse_s - max lse) are not normalised. Hint: divide by their sum "
                               "(equivalently, use exp(lse_s - logsumexp(lse)))"),
]


def _merge_cases():
    g = torch.Generator().manual_seed(3)
    cases = []
    for S, n, d, shift in ((3, 2, 4, 0.0), (4, 3, 2, 800.0), (2, 2, 3, 0.0)):
        outs = torch.randn(S, n, d, generator=g)
        lses = torch.randn(S, n, generator=g) * 3 + shift  # shift: log-sum-exps in the hundreds (large scores)
        cases.append((outs, lses))
    outs, lses = cases[2]
    lses[1, 0] = float("-inf")  # query 0: its second split is empty ...
    outs[1, 0] = 0.0
    lses[:, 1] = float("-inf")  # ... and query 1 has no rows at all (a sequence of length 0): zeros
    outs[:, 1] = 0.0
    return cases


@checker("12.3", "merge_splits")
def check_merge_splits(merge_splits: Answer) -> str:
    """Exercise 12.3: merge_splits(outs, lses) -> (n, d), the split-KV results merged by log-sum-exp."""
    cases = _merge_cases()
    for c, (outs, lses) in enumerate(cases):
        want = reference_merge_splits(outs, lses)
        got = _expect_tensor(merge_splits(outs, lses), want.shape, f"merge_splits of {outs.shape[0]} splits")
        where = f"case {c + 1} ({outs.shape[0]} splits, log-sum-exps around {lses[torch.isfinite(lses)].mean():.0f}): "
        if torch.isnan(got).any() or torch.isinf(got).any():
            empty = bool(torch.isinf(lses).all(dim=0).any())
            hint = ("a query whose splits are all empty (every lse -inf) must get zeros, not 0 / 0: take the "
                    "max as 0 there, and divide by the sum of weights only where it is positive" if empty and
                    c == 2 else "exp(lse) overflows for log-sum-exps in the hundreds: subtract the largest lse "
                    "of each query before exponentiating")
            raise _Fail(where + "the result holds inf or NaN. Hint: " + hint)
        if _close(got, want, atol=1e-6, rtol=1e-5):
            continue
        diagnose(got, [(_merge(outs, lses, **switches), hint) for switches, hint in _MERGE_MISTAKES], prefix=where)
        raise _Fail(f"{where}the merged output differs from the reference. Hint: top = lses.amax(0); "
                    "w = exp(lses - top); out = (w[..., None] * outs).sum(0) / w.sum(0)[:, None]")
    return (f"matches the reference on {len(cases)} cases: log-sum-exps near 800 without overflow, an empty split "
            "and a query with no rows (zeros)")


__all__ = ["check_mla_decode_cost", "check_online_softmax_step", "check_merge_splits",
           "reference_mla_decode_cost", "reference_online_softmax_step", "reference_merge_splits"]
