"""Checkers for the exercises of lesson 13: scaling out (a token's bytes between nodes, the split-size
exchange before an all-to-all, and a pipeline's bubble).

The references follow DeepSeek-V3 §3.2 (arXiv 2412.19437): dispatch in FP8 with one float32 scale per 1x128
tile, combine in BF16, a token sent once per target node; the bubbles of V3's Table 2 (1F1B, ZB1P,
DualPipe). They are written here independently and agree with the library:
:func:`mlakit.distributed.v3_bytes_per_token`, the count exchange of
:class:`mlakit.distributed.ExpertParallelMoE` and :func:`mlakit.distributed.bubble`. Each checker runs the
learner's function on cases chosen so that every typical mistake gives a different answer, and
:func:`diagnose` names the one the learner's answer equals.
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

FP8_TILE = 128  # V3's activation tiles: one float32 scale per 1x128 values


# ---------------------------------------------------------------- 13.1
def _bytes(hidden: int, experts: int, nodes: int, *, per: str = "node", scale_bytes: int = 4, tile: int = FP8_TILE,
           dispatch: int = 1, combine: int = 2, ceil: bool = True) -> int:
    """A token's cross-node bytes, or one typical mistake of them (keyword switches)."""
    copies = nodes if per == "node" else experts
    tiles = math.ceil(hidden / tile) if ceil else hidden // tile
    return copies * (hidden * dispatch + scale_bytes * tiles) + copies * hidden * combine


def reference_bytes_per_token(hidden: int, experts_per_token: int, target_nodes: int) -> int:
    """Bytes one token sends across nodes in one MoE layer, V3-style: once per target node, dispatch in FP8
    (H bytes plus a 4-byte float32 scale per 1x128 tile, ceil(H / 128) tiles), combine in BF16 (2H bytes).

    ``experts_per_token`` (k) does not enter: the k experts on a node share the node's one copy.
    """
    return _bytes(hidden, experts_per_token, target_nodes)


_BYTES_MISTAKES = [
    (dict(per="expert"), "you counted one copy per expert (k). Hint: V3 sends a token across InfiniBand once per "
                         "target node; the experts of that node share it (NVLink forwards it inside the node)"),
    (dict(scale_bytes=0), "the fp8 scales are missing. Hint: each 1x128 tile of the hidden vector carries one "
                          "float32 scale: 4 bytes x ceil(H / 128) per copy"),
    (dict(scale_bytes=1), "each scale counted as 1 byte. Hint: the scales are float32, 4 bytes each"),
    (dict(combine=1), "the combine counted at 1 byte per value. Hint: V3 combines in BF16, 2 bytes per value"),
    (dict(dispatch=2, scale_bytes=0), "the dispatch counted in BF16. Hint: V3 dispatches in FP8, 1 byte per "
                                      "value plus the scales"),
    (dict(ceil=False), "a partial tile lost its scale. Hint: ceil(H / 128) tiles, the last one may be shorter"),
    (dict(combine=0), "the combine is missing. Hint: the results come back the same way, in BF16"),
]


@checker("13.1", "bytes_per_token")
def check_bytes_per_token(bytes_per_token: Answer) -> str:
    """Exercise 13.1: bytes_per_token(hidden, experts_per_token, target_nodes) -> int."""
    cases = [(7168, 8, 4), (7168, 8, 8), (200, 3, 2), (4096, 6, 1), (64, 2, 1)]
    for hidden, k, nodes in cases:
        want = reference_bytes_per_token(hidden, k, nodes)
        got = _as_number(bytes_per_token(hidden, k, nodes), f"bytes_per_token({hidden}, {k}, {nodes})")
        if got == want:
            continue
        where = f"bytes_per_token({hidden}, {k}, {nodes}) = {got}; expected {want}: "
        diagnose(got, [(_bytes(hidden, k, nodes, **s), hint) for s, hint in _BYTES_MISTAKES], same=lambda a, b: a == b,
                 prefix=where)
        raise _Fail(where + "Hint: nodes x (H + 4 ceil(H / 128)) for the fp8 dispatch, plus nodes x 2H for the "
                    "bf16 combine")
    return (f"matches the reference on {len(cases)} cases: V3's token, 4 nodes, {reference_bytes_per_token(7168, 8, 4):,} "
            "bytes per MoE layer")


# ---------------------------------------------------------------- 13.2
def _splits(send_counts: torch.Tensor, *, layout: str = "contiguous", transpose: bool = True):
    W, E = send_counts.shape
    L = E // W
    if layout == "contiguous":
        per_rank = send_counts.view(W, W, L).sum(-1)  # [r, d]: rows r sends to rank d
    else:  # expert e on rank e % W
        per_rank = send_counts.view(W, L, W).sum(1)
    return per_rank, (per_rank.T if transpose else per_rank)


def reference_split_sizes(send_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The split sizes of the dispatch all-to-all on every rank, from the routing counts of every rank.

    ``send_counts`` (W, E) int64: row r counts the (token, slot) rows rank r routes to each expert; rank d
    holds the contiguous experts ``[d E/W, (d + 1) E/W)``. Returns ``(input_splits, output_splits)``,
    each (W, W): ``input_splits[r, d]`` rows rank r sends to rank d, ``output_splits[r, s]`` rows rank r
    receives from rank s (= input_splits[s, r]: what the count all-to-all tells each rank).
    """
    return _splits(send_counts)


_SPLIT_MISTAKES = [
    (dict(transpose=False), "output_splits equals input_splits. Hint: rank r receives from s what s sends to r: "
                            "output_splits[r, s] = input_splits[s, r] (a transpose; the count all-to-all does it)"),
    (dict(layout="strided"), "experts were dealt round-robin (expert e on rank e % W). Hint: each rank holds a "
                             "contiguous range, [d E/W, (d + 1) E/W): view (W, W, E/W) and sum the last dim"),
    (dict(layout="strided", transpose=False), "experts round-robin and no transpose. Hint: contiguous ranges "
                                              "(view (W, W, E/W), sum the last dim), then transpose"),
]


def _split_cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(13)
    return [torch.tensor([[3, 0, 1, 2], [0, 5, 4, 1]]),  # the lesson's example: 2 ranks, 4 experts
            torch.randint(0, 6, (3, 6), generator=g),
            torch.randint(0, 4, (4, 8), generator=g),
            torch.tensor([[0, 0, 7, 1], [2, 0, 0, 0]])]  # zeros: a rank sends nothing to another


@checker("13.2", "split_sizes")
def check_split_sizes(split_sizes: Answer) -> str:
    """Exercise 13.2: split_sizes(send_counts) -> (input_splits, output_splits), each (W, W)."""
    cases = _split_cases()
    for counts in cases:
        W = counts.shape[0]
        want = reference_split_sizes(counts)
        got = _expect_sequence(split_sizes(counts), 2, "the answer")
        got = tuple(_expect_tensor(t, (W, W), name) for t, name in zip(got, ("input_splits", "output_splits"),
                                                                        strict=True))
        if all(torch.equal(g.long(), w) for g, w in zip(got, want, strict=True)):
            continue
        where = f"for send_counts {counts.tolist()}: "

        def same(a, b):
            return all(torch.equal(x.long(), y) for x, y in zip(a, b, strict=True))

        diagnose(got, [(_splits(counts, **s), hint) for s, hint in _SPLIT_MISTAKES], same=same, prefix=where)
        raise _Fail(where + f"got input {got[0].tolist()}, output {got[1].tolist()}; expected input "
                    f"{want[0].tolist()}, output {want[1].tolist()}. Hint: input_splits[r, d] sums row r's counts "
                    "over rank d's experts; output_splits is its transpose")
    return f"matches the reference on {len(cases)} routings (2 to 4 ranks, zeros included)"


# ---------------------------------------------------------------- 13.3
def _bubble(schedule: str, pp: int, F: float, B: float, W: float, FB: float, *, stages: str = "right",
            w_factor: str = "right") -> float:
    if schedule == "1F1B":
        n = pp - 1 if stages == "right" else pp
        return n * (F + B)
    if schedule == "ZB1P":
        n = pp - 1 if stages == "right" else pp
        w = 2 * W if w_factor == "right" else W
        return n * (F + B - w)
    n = pp / 2 - 1 if stages == "right" else pp - 1
    w = 3 * W if w_factor == "right" else W
    return n * (FB + B - w)


def reference_pipeline_bubble(schedule: str, pp: int, F: float, B: float, W: float, FB: float) -> float:
    """Idle time per device (V3 Table 2): 1F1B (PP - 1)(F + B); ZB1P (PP - 1)(F + B - 2W);
    DualPipe (PP/2 - 1)(F&B + B - 3W), with F&B = ``FB`` the time of an overlapped forward and backward chunk."""
    return float(_bubble(schedule, pp, F, B, W, FB))


_BUBBLE_MISTAKES = [
    (dict(stages="pp"), "you counted PP stages of ramp, not PP - 1 (or for DualPipe, PP - 1 instead of PP/2 - 1). "
                        "Hint: 1F1B and ZB1P idle for PP - 1 chunks; DualPipe, fed from both ends, for PP/2 - 1"),
    (dict(w_factor="one"), "the weight-gradient term is W once. Hint: ZB1P removes 2W per ramp step, DualPipe 3W"),
]


@checker("13.3", "pipeline_bubble")
def check_pipeline_bubble(pipeline_bubble: Answer) -> str:
    """Exercise 13.3: pipeline_bubble(schedule, pp, F, B, W, FB) -> float."""
    cases = [("1F1B", 16, 1.0, 2.0, 1.0, 2.5), ("ZB1P", 16, 1.0, 2.0, 1.0, 2.5), ("DualPipe", 16, 1.0, 2.0, 1.0, 2.5),
             ("1F1B", 4, 1.5, 3.0, 1.0, 4.0), ("ZB1P", 8, 1.0, 2.0, 0.5, 3.0), ("DualPipe", 8, 1.0, 2.0, 0.5, 3.0),
             ("DualPipe", 2, 1.0, 2.0, 1.0, 3.0)]
    for case in cases:
        want = reference_pipeline_bubble(*case)
        got = _as_number(pipeline_bubble(*case), f"pipeline_bubble{case}")
        if _close(torch.tensor(float(got)), torch.tensor(want)):
            continue
        where = f"pipeline_bubble{case} = {got}; expected {want}: "
        diagnose(got, [(_bubble(*case, **s), hint) for s, hint in _BUBBLE_MISTAKES],
                 same=lambda a, b: math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), prefix=where)
        raise _Fail(where + "Hint: (PP - 1)(F + B), (PP - 1)(F + B - 2W), (PP/2 - 1)(F&B + B - 3W)")
    return (f"matches V3's Table 2 on {len(cases)} cases: at PP 16, F 1, B 2, W 1, F&B 2.5: 1F1B 45, ZB1P 15, "
            "DualPipe 10.5")


__all__ = ["reference_bytes_per_token", "check_bytes_per_token", "reference_split_sizes", "check_split_sizes",
           "reference_pipeline_bubble", "check_pipeline_bubble"]
