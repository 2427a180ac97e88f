"""Checkers for the exercises of lesson 05: DeepSeekMoE (the V3 gate, group-limited routing, active parameters,
combining the experts).

The formulas follow DeepSeek-V3 §2.1.2 (arXiv 2412.19437) and :mod:`mlakit.moe`:
affinities s = sigmoid(logits), experts chosen by s + b (the balancing bias),
gate weights from the unbiased s of the chosen experts, renormalised over the
k chosen and multiplied by routed_scaling_factor; a group's score is the sum of
its two largest biased scores, and only the best topk_group groups may be chosen.
Each checker computes the mistakes learners make as whole alternative answers
(the keyword switches of one function per exercise, ``_gate`` ...) and
:func:`diagnose` names the one the learner's answer equals.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...config import ModelConfig
from ...layers import SwiGLU
from ...moe import GROUP_TOP, NORM_EPS
from ._core import Answer, _as_number, _close, _expect_tensor, _Fail, checker, diagnose


# ---------------------------------------------------------------- 05.1
def _gate(logits: torch.Tensor, bias: torch.Tensor, k: int, routed_scaling_factor: float, *,
          score: str = "sigmoid", bias_in_selection: bool = True, bias_on_logits: bool = False,
          biased_weights: bool = False, renormalise: bool = True, scale: bool = True):
    """The V3 gate without groups, or one of its typical mistakes (keyword switches)."""
    s = logits.float().sigmoid() if score == "sigmoid" else logits.float().softmax(dim=-1)  # (T, E)
    if bias_on_logits:
        chosen_by = logits.float() + bias  # (T, E): same order as sigmoid(logits + b)
    else:
        chosen_by = s + bias if bias_in_selection else s  # (T, E)
    indices = chosen_by.topk(k, dim=-1).indices  # (T, k)
    weights = (s + bias if biased_weights else s).gather(1, indices)  # (T, k)
    if renormalise:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + NORM_EPS)
    if scale:
        weights = weights * routed_scaling_factor
    return weights, indices


def reference_sigmoid_topk_gate(logits: torch.Tensor, bias: torch.Tensor, k: int, routed_scaling_factor: float):
    """V3's gate without groups: (weights (T, k), indices (T, k)) for router logits (T, E) and bias (E,).

    Experts are chosen by the top k of sigmoid(logits) + bias; their weights are
    the unbiased sigmoid(logits), renormalised over the k chosen, times
    routed_scaling_factor.
    """
    return _gate(logits, bias, k, routed_scaling_factor)


def _by_expert(weights: torch.Tensor, indices: torch.Tensor):
    """Both sorted by expert id within each token, so the order of the k slots does not matter."""
    order = indices.argsort(dim=-1)  # (T, k)
    return weights.gather(-1, order), indices.gather(-1, order)


_GATE_SELECTION_MISTAKES = [
    (dict(bias_in_selection=False), "you chose the experts by sigmoid(logits) alone. Hint: choose the top k of "
     "sigmoid(logits) + bias: the balancing bias steers which experts are chosen"),
    (dict(bias_on_logits=True), "you added the bias to the logits. Hint: add it to the affinities: "
     "top k of sigmoid(logits) + bias"),
    (dict(score="softmax"), "the experts were chosen from softmax affinities (DeepSeek-V2's gate). Hint: V3 "
     "scores each expert independently with sigmoid(logits)"),
]
_GATE_WEIGHT_MISTAKES = [
    (dict(biased_weights=True), "the weights use the biased scores sigmoid(logits) + bias. Hint: the bias only "
     "chooses the experts; take the weights from the unbiased sigmoid(logits) of the chosen experts"),
    (dict(renormalise=False, scale=False), "the weights are the raw sigmoid affinities. Hint: divide the k chosen "
     "affinities by their sum, then multiply by routed_scaling_factor"),
    (dict(renormalise=False), "the weights are not renormalised. Hint: divide the k chosen affinities by their "
     "sum before multiplying by routed_scaling_factor"),
    (dict(scale=False), "the weights of each token sum to 1, not to routed_scaling_factor. Hint: multiply the "
     "renormalised weights by routed_scaling_factor"),
    (dict(score="softmax"), "these are softmax weights (DeepSeek-V2's gate). Hint: V3's affinities are "
     "sigmoid(logits), one independent score per expert"),
    (dict(score="softmax", renormalise=False), "these are softmax weights (DeepSeek-V2's gate). Hint: V3's "
     "affinities are sigmoid(logits), renormalised over the k chosen"),
]


@checker("05.1", "sigmoid_topk_gate")
def check_sigmoid_topk_gate(sigmoid_topk_gate: Answer) -> str:
    """Exercise 05.1: sigmoid_topk_gate(logits, bias, k, routed_scaling_factor) -> (weights, indices), V3's gate."""

    g = torch.Generator().manual_seed(51)
    cases = []  # (logits, bias, k, scaling factor, the learner's weights and indices sorted by expert)
    for T, E, k, scale in [(6, 8, 2, 2.5), (5, 16, 4, 2.5), (4, 32, 8, 1.5)]:
        logits = torch.randn(T, E, generator=g) * 1.5
        bias = torch.randn(E, generator=g) * 0.3
        out = sigmoid_topk_gate(logits, bias, k, scale)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):  # a list is as right as a tuple
            raise _Fail("return a tuple (weights, indices)")
        if all(isinstance(t, torch.Tensor) for t in out) and out[1].is_floating_point() \
                and not (out[0].is_floating_point() or out[0].dtype == torch.bool):
            raise _Fail("you returned (indices, weights): the integer expert ids come first. Hint: return "
                        "(weights, indices), the gate weights first, as mlakit.moe.Router does")
        weights = _expect_tensor(out[0], (T, k), f"the weight tensor for {T} tokens, {E} experts, k = {k}")
        indices = _expect_tensor(out[1], (T, k), f"the index tensor for {T} tokens, {E} experts, k = {k}")
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise _Fail(f"the indices have dtype {indices.dtype}. Hint: return the expert ids as integers, "
                        "e.g. the .indices of topk")
        cases.append((logits, bias, k, scale, *_by_expert(weights.float(), indices.long())))

    def same(cases: list, switches: dict) -> bool:
        """The learner's answers (the last two items of each case) equal the gate with these switches."""
        for logits, bias, k, scale, got_w, got_i in cases:
            want_w, want_i = _by_expert(*_gate(logits, bias, k, scale, **switches))
            if not (torch.equal(got_i, want_i) and _close(got_w, want_w)):
                return False
        return True

    if same(cases, {}):
        return f"right experts and weights on {len(cases)} inputs"
    diagnose(cases, _GATE_SELECTION_MISTAKES + _GATE_WEIGHT_MISTAKES, same=same)
    for logits, bias, k, scale, got_w, got_i in cases:
        want_w, want_i = _by_expert(*reference_sigmoid_topk_gate(logits, bias, k, scale))
        where = f"with {logits.shape[1]} experts and k = {k}"
        if not torch.equal(got_i, want_i):
            t = int((got_i != want_i).any(dim=-1).nonzero()[0])
            raise _Fail(f"{where}: token {t} gets experts {got_i[t].tolist()}; expected {want_i[t].tolist()}. "
                        "Hint: the k experts with the largest sigmoid(logits) + bias")
        if not _close(got_w, want_w):
            sums = [round(v, 3) for v in got_w.sum(-1).tolist()[:3]]
            raise _Fail(f"{where}: the experts are right but the weights are not (their sums per token start "
                        f"{sums}; expected {scale} each). Hint: sigmoid(logits) of the chosen experts, divided "
                        "by their sum, times routed_scaling_factor")
    raise _Fail("your answer differs from the reference")  # not reached: some case differs


# ---------------------------------------------------------------- 05.2
def _group_mask(scores: torch.Tensor, n_group: int, topk_group: int, *, group_score: str = "top2_sum",
                interleaved: bool = False, worst: bool = False, inverted: bool = False) -> torch.Tensor:
    """The group-limited mask, or one of its typical mistakes (keyword switches)."""
    T, E = scores.shape
    if interleaved:  # expert e in group e % n_group
        grouped = scores.view(T, E // n_group, n_group).transpose(1, 2)  # (T, G, E/G)
    else:
        grouped = scores.view(T, n_group, E // n_group)  # (T, G, E/G): consecutive experts
    if group_score == "top2_sum":
        group_scores = grouped.topk(GROUP_TOP, dim=-1).values.sum(-1)  # (T, G)
    elif group_score == "top_topk_group_sum":  # the top topk_group scores of a group, not its top 2
        group_scores = grouped.topk(min(topk_group, E // n_group), dim=-1).values.sum(-1)
    elif group_score == "max":
        group_scores = grouped.amax(dim=-1)
    else:
        group_scores = grouped.sum(dim=-1)
    kept = group_scores.topk(topk_group, dim=-1, largest=not worst).indices  # (T, topk_group)
    group_mask = torch.zeros(T, n_group, dtype=torch.bool).scatter_(1, kept, True)  # (T, G)
    mask = group_mask[:, :, None].expand_as(grouped)  # (T, G, E/G)
    mask = mask.transpose(1, 2).reshape(T, E) if interleaved else mask.reshape(T, E)
    return ~mask if inverted else mask


def reference_group_limited_mask(scores: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """(T, E) bool, True for the experts of the topk_group best groups of each token.

    ``scores`` (T, E) are the biased affinities s + b; the experts form n_group
    groups of consecutive experts, and a group's score is the sum of its two
    largest scores (V3).
    """
    return _group_mask(scores, n_group, topk_group)


_GROUP_MISTAKES = [
    (dict(inverted=True), "True marks the experts that are masked out. Hint: return True for the experts of "
     "the kept groups (the ones that may still be chosen)"),
    (dict(group_score="max"), "you scored each group by its best expert (DeepSeek-V2's rule). Hint: V3 sums the "
     "group's two largest scores: grouped.topk(2, dim=-1).values.sum(-1)"),
    (dict(group_score="sum"), "you summed every score of the group. Hint: only the group's two largest scores "
     "count: grouped.topk(2, dim=-1).values.sum(-1)"),
    (dict(group_score="top_topk_group_sum"), "you scored each group by the sum of its top topk_group scores. "
     "Hint: a group's score is the sum of its top-2 experts' scores, whatever topk_group is: "
     "grouped.topk(2, dim=-1).values.sum(-1); topk_group is how many GROUPS are kept"),
    (dict(interleaved=True), "your groups are interleaved (expert e in group e % n_group). Hint: a group is a "
     "block of consecutive experts, group g = experts [g E/G, (g + 1) E/G): scores.view(T, n_group, -1)"),
    (dict(worst=True), "you kept the groups with the lowest scores. Hint: keep the topk_group groups with the "
     "highest scores (topk takes the largest by default)"),
]


@checker("05.2", "group_limited_mask")
def check_group_limited_mask(group_limited_mask: Answer) -> str:
    """Exercise 05.2: group_limited_mask(scores, n_group, topk_group) -> (T, E) bool mask of the kept groups."""

    g = torch.Generator().manual_seed(52)
    cases = []  # (scores, n_group, topk_group, the learner's mask)
    # groups of 4, 8 and 8 experts, so a group's top 2, its best expert, all of it and its top topk_group (4 of
    # V3's 8 groups) all differ; 1 group of 3 kept, so "the worst groups" differs from "the mask inverted"
    for T, E, n_group, topk_group in [(8, 16, 4, 2), (6, 64, 8, 4), (8, 24, 3, 1), (3, 8, 1, 1)]:
        scores = torch.rand(T, E, generator=g) + 0.1 * torch.randn(T, E, generator=g)
        where = f"with {E} experts in {n_group} groups, keeping {topk_group}"
        got = _expect_tensor(group_limited_mask(scores, n_group, topk_group), (T, E), f"the mask {where}")
        if got.dtype != torch.bool:
            if got.dtype.is_floating_point and torch.isinf(got).any():
                raise _Fail(f"{where}: you returned masked scores. Hint: return the bool mask itself, "
                            "True for the experts of the kept groups")
            raise _Fail(f"{where}: the mask has dtype {got.dtype}. Hint: return a bool tensor, True for the "
                        "experts of the kept groups")
        cases.append((scores, n_group, topk_group, got))

    def same(cases: list, switches: dict) -> bool:
        return all(torch.equal(got, _group_mask(scores, G, kg, **switches)) for scores, G, kg, got in cases)

    if same(cases, {}):
        return f"keeps the right groups on {len(cases)} inputs, V3's 8 groups keep 4 included"
    diagnose(cases, _GROUP_MISTAKES, same=same)
    for scores, n_group, topk_group, got in cases:
        want = reference_group_limited_mask(scores, n_group, topk_group)
        if torch.equal(got, want):
            continue
        E = scores.shape[1]
        where = f"with {E} experts in {n_group} groups, keeping {topk_group}"
        per_token, expected = got.sum(-1).tolist(), topk_group * (E // n_group)
        if any(n != expected for n in per_token):
            raise _Fail(f"{where}: tokens keep {per_token} experts; expected {expected} each (topk_group whole "
                        "groups of E / n_group experts). Hint: choose groups, then keep every expert of a chosen "
                        "group")
        t = int((got != want).any(dim=-1).nonzero()[0])
        raise _Fail(f"{where}: token {t} keeps experts {got[t].nonzero().flatten().tolist()}; expected "
                    f"{want[t].nonzero().flatten().tolist()}. Hint: group score = sum of the group's two largest "
                    "scores; keep the topk_group best groups")
    raise _Fail("your mask differs from the reference")  # not reached: some case differs


# ---------------------------------------------------------------- 05.3
def _ffn_active(config: ModelConfig, *, routed: str = "k", shared: bool = True, dense: str = "dense",
                router: bool = True, matrices: int = 3, mtp: bool = False) -> int:
    """FFN parameters one token uses, or one of the typical miscounts (keyword switches)."""
    d, L = config.hidden_size, config.num_hidden_layers + (config.num_nextn_predict_layers if mtp else 0)
    dense_ffn = matrices * d * config.intermediate_size
    if config.n_routed_experts == 0:
        return L * dense_ffn
    expert = matrices * d * config.moe_intermediate_size
    n_routed = config.num_experts_per_tok if routed == "k" else config.n_routed_experts
    moe = (config.n_routed_experts * d if router else 0) + ((config.n_shared_experts if shared else 0) + n_routed) * expert
    n_dense = config.first_k_dense_replace
    if dense == "dense":
        return n_dense * dense_ffn + (L - n_dense) * moe
    if dense == "missing":
        return (L - n_dense) * moe
    return L * moe  # dense == "as_moe": every layer counted as MoE


def reference_ffn_active_parameters(config: ModelConfig) -> int:
    """Feed-forward parameters one token uses, over the config's num_hidden_layers layers (MTP excluded).

    Each of the first first_k_dense_replace layers has a dense SwiGLU FFN
    (3 x hidden x intermediate_size); each MoE layer contributes its router
    (n_routed_experts x hidden), its shared experts and num_experts_per_tok routed
    experts (3 x hidden x moe_intermediate_size each). A config without routed
    experts is dense in every layer.
    """
    return _ffn_active(config)


_ACTIVE_MISTAKES = [
    (dict(routed="all"), "you counted every routed expert. Hint: a token runs only num_experts_per_tok of the "
     "n_routed_experts routed experts"),
    (dict(shared=False), "the shared experts are missing. Hint: every token runs the n_shared_experts shared "
     "experts of each MoE layer"),
    (dict(dense="missing"), "the dense layers are missing. Hint: the first first_k_dense_replace layers have a "
     "dense SwiGLU FFN of width intermediate_size"),
    (dict(dense="as_moe"), "you counted every layer as an MoE layer. Hint: the first first_k_dense_replace layers "
     "have a dense SwiGLU FFN of width intermediate_size instead"),
    (dict(router=False), "the routers are missing. Hint: every token multiplies its hidden state by each MoE "
     "layer's router weight (n_routed_experts x hidden_size)"),
    (dict(matrices=2), "you counted two matrices per FFN. Hint: a SwiGLU FFN has three: gate, up and down"),
    (dict(mtp=True), "you counted the multi-token-prediction modules. Hint: count the num_hidden_layers layers "
     "only (the reported 671B and 37B of V3 exclude MTP)"),
]


def _as_count(value) -> int | float:
    """A Python number from an int, a float, a NumPy scalar or a one-element tensor."""
    try:
        return _as_number(value, "the count")
    except _Fail:
        raise _Fail(f"return a number, got {type(value).__name__}") from None


@checker("05.3", "ffn_active_parameters")
def check_ffn_active_parameters(ffn_active_parameters: Answer) -> str:
    """Exercise 05.3: ffn_active_parameters(config) -> feed-forward parameters one token uses."""

    configs = [("deepseek-v3", ModelConfig.from_preset("deepseek-v3")),
               ("deepseek-v2", ModelConfig.from_preset("deepseek-v2")),
               ("nano", ModelConfig.from_preset("nano")),
               ("a custom config", ModelConfig(n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=3,
                                               n_group=4, topk_group=2, first_k_dense_replace=2))]
    got = [_as_count(ffn_active_parameters(config)) for _, config in configs]
    want = [reference_ffn_active_parameters(config) for _, config in configs]
    if got != want:
        i = next(i for i in range(len(configs)) if got[i] != want[i])
        where = f"for {configs[i][0]} you get {got[i]:,.0f}; expected {want[i]:,}"
        diagnose(got, _ACTIVE_MISTAKES, prefix=f"{where}: ",
                 same=lambda answers, switches: answers == [_ffn_active(c, **switches) for _, c in configs])
        raise _Fail(f"{where}. Hint: dense layers x 3 d intermediate_size + MoE layers x (router n_routed_experts "
                    "x d + (n_shared_experts + num_experts_per_tok) x 3 d moe_intermediate_size)")
    dense = ModelConfig.from_preset("nano", n_routed_experts=0, first_k_dense_replace=0)
    value, expected = _as_count(ffn_active_parameters(dense)), reference_ffn_active_parameters(dense)
    if value != expected:
        raise _Fail(f"for nano without experts (n_routed_experts = 0) you get {value:,.0f}; expected {expected:,}. "
                    "Hint: a config without routed experts is dense: every layer has a dense FFN of width "
                    "intermediate_size (see mlakit.model.Block)")
    return f"right for {len(configs)} MoE configs, V3 and V2 included, and a dense one"


# ---------------------------------------------------------------- 05.4
def _combine(x, shared, experts, weights, indices, *, use_weights: bool = True, use_shared: bool = True,
             residual: bool = False, slot_as_expert: bool = False, present_by_position: bool = False) -> torch.Tensor:
    """shared(x) + sum_k g_k expert_k(x), or one of the typical mistakes (keyword switches).

    ``present_by_position``: a sorted dispatch that pairs the i-th group of
    ``indices.unique(return_counts=True)`` with experts[i], though unique lists
    only the experts that got a token.
    """
    out = shared(x).float() if use_shared else torch.zeros(x.shape)
    if residual:
        out = out + x
    position = {int(e): i for i, e in enumerate(indices.unique().tolist())}  # expert id -> its rank among the used
    for t in range(x.shape[0]):
        for j in range(indices.shape[1]):
            e = j if slot_as_expert else int(indices[t, j])
            e = position[e] if present_by_position else e
            y = experts[e](x[t:t + 1])[0].float()  # (H,)
            out[t] += weights[t, j] * y if use_weights else y
    return out


def reference_combine_experts(x: torch.Tensor, shared: Callable, experts, weights: torch.Tensor,
                              indices: torch.Tensor) -> torch.Tensor:
    """shared(x) + sum over k of weights[t, k] * experts[indices[t, k]](x[t]), for x (T, H) -> (T, H).

    The residual x is not added: the block around the MoE layer adds it.
    """
    out = shared(x).float()  # (T, H)
    for e, expert in enumerate(experts):
        token_idx, slot = torch.where(indices == e)  # tokens that chose expert e, and in which of their k slots
        if token_idx.numel():
            out = out.index_add(0, token_idx, expert(x[token_idx]).float() * weights[token_idx, slot, None])
    return out


_COMBINE_MISTAKES = [
    (dict(use_weights=False), "the expert outputs are not weighted. Hint: multiply expert_k(x_t) by its gate "
     "weight weights[t, k] before summing"),
    (dict(use_shared=False), "the shared expert is missing. Hint: start from shared(x): the shared experts see "
     "every token"),
    (dict(residual=True), "you added the input x. Hint: the residual is added by the block around the MoE layer; "
     "return shared(x) + sum_k g_k expert_k(x) only"),
    (dict(use_weights=False, use_shared=False), "the shared expert is missing and the expert outputs are not "
     "weighted. Hint: shared(x) + sum_k weights[t, k] * expert_k(x_t)"),
    (dict(slot_as_expert=True), "you ran experts[k] for slot k. Hint: slot k of token t holds expert "
     "indices[t, k]: run experts[indices[t, k]]"),
    (dict(present_by_position=True), "when an expert gets no token, the tokens of the experts after it go to the "
     "wrong expert: the groups are paired with experts by position, but indices.unique(return_counts=True) lists "
     "only the experts that were chosen. Hint: pair each group with the expert id unique returns next to its "
     "count, or count with torch.bincount(indices.flatten(), minlength=len(experts)) so every expert has a group, "
     "empty or not"),
]


@checker("05.4", "combine_experts")
def check_combine_experts(combine_experts: Answer) -> str:
    """Exercise 05.4: combine_experts(x, shared, experts, weights, indices) -> shared(x) + sum_k g_k expert_k(x)."""

    g = torch.Generator().manual_seed(54)
    cases = []  # (x, shared, experts, weights, indices, the learner's output)
    with torch.no_grad():
        # (T, H, E, k, an expert no token chooses): the third case leaves a middle expert out (a dispatch that
        # pairs groups with experts by position shows), the last one routes each token to k = 1 expert
        for T, H, E, k, unused in [(7, 8, 4, 2, None), (5, 12, 6, 3, None), (6, 8, 5, 2, 2), (6, 10, 4, 1, None)]:
            with torch.random.fork_rng(devices=[]):  # seeded experts, the learner's random state untouched
                torch.manual_seed(540 + E)
                shared = SwiGLU(H, 2 * H)
                experts = [SwiGLU(H, H) for _ in range(E)]
            x = torch.randn(T, H, generator=g)
            n_used = E if unused is None else E - 1
            indices = torch.rand(T, n_used, generator=g).argsort(dim=-1)[:, :k]  # (T, k) distinct experts per token
            if unused is not None:
                indices = indices + (indices >= unused).long()  # expert `unused` gets no token
            weights = torch.rand(T, k, generator=g) * 2.5
            got = combine_experts(x, shared, experts, weights, indices)
            got = _expect_tensor(got, (T, H), f"the output for x of shape {(T, H)}").float()
            cases.append((x, shared, experts, weights, indices, got))

        def same(cases: list, switches: dict) -> bool:
            return all(_close(got, _combine(x, s, e, w, i, **switches)) for x, s, e, w, i, got in cases)

        if same(cases, {}):
            return f"matches shared(x) + sum_k g_k expert_k(x) on {len(cases)} inputs"
        diagnose(cases, _COMBINE_MISTAKES, same=same)
        for x, shared, experts, weights, indices, got in cases:
            want = reference_combine_experts(x, shared, experts, weights, indices)
            if _close(got, want):
                continue
            differs = (~torch.isclose(got, want, atol=1e-5, rtol=1e-4)).any(dim=-1).nonzero().flatten()
            which = f"token {int(differs[0])} differs" if differs.numel() else "the output differs"
            raise _Fail(f"with {len(experts)} experts and k = {indices.shape[1]}: {which} from the reference. "
                        "Hint: out[t] = shared(x)[t] + sum_k weights[t, k] * experts[indices[t, k]](x[t])")
    raise _Fail("your output differs from the reference")  # not reached: some case differs


__all__ = ["reference_sigmoid_topk_gate", "check_sigmoid_topk_gate", "reference_group_limited_mask",
           "check_group_limited_mask", "reference_ffn_active_parameters", "check_ffn_active_parameters",
           "reference_combine_experts", "check_combine_experts"]
