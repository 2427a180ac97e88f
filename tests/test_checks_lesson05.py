"""Lesson 05 checkers: the references equal the library, known-wrong answers fail with their hint, stubs are not
attempted."""


import numpy as np
import pytest
import torch
from learner import as_learner, assert_in_place_change_fails

from mlakit import ModelConfig
from mlakit.course import checks
from mlakit.course.checks import FAIL, NOT_ATTEMPTED, PASS
from mlakit.course.checks.lesson05 import _combine, _ffn_active, _gate, _group_mask
from mlakit.layers import SwiGLU
from mlakit.model import MiniDeepSeek
from mlakit.moe import DeepSeekMoE, Router


def _not_done(*args, **kwargs):
    raise NotImplementedError


# ------------------------------------------------- references against the library
@pytest.mark.parametrize("n_group, topk_group", [(1, 1), (4, 2), (8, 4)])
def test_gate_and_mask_references_equal_the_router(n_group, topk_group):
    torch.manual_seed(n_group)
    E, k, T = 32, 4, 9
    cfg = ModelConfig(hidden_size=E, n_routed_experts=E, num_experts_per_tok=k, n_group=n_group, topk_group=topk_group,
                      routed_scaling_factor=2.5, norm_topk_prob=True, scoring_func="sigmoid")
    router = Router(cfg)
    with torch.no_grad():
        router.weight.copy_(torch.eye(E))  # logits = x
        router.e_score_correction_bias.copy_(torch.randn(E) * 0.3)
    logits = torch.randn(T, E)
    out = router(logits)
    bias = router.e_score_correction_bias
    biased = logits.sigmoid() + bias
    mask = checks.reference_group_limited_mask(biased, n_group, topk_group)
    assert mask.sum(-1).tolist() == [topk_group * E // n_group] * T
    # a masked expert must lose even with a positive bias: mask the selection score, not just the affinity
    masked_bias = bias.expand(T, E).masked_fill(~mask, float("-inf"))
    weights, indices = checks.reference_sigmoid_topk_gate(logits, masked_bias, k, 2.5)
    assert torch.equal(indices.sort(-1).values, out.indices.sort(-1).values)
    torch.testing.assert_close(weights.gather(-1, indices.argsort(-1)), out.weights.gather(-1, out.indices.argsort(-1)))


@pytest.mark.parametrize("preset", ["deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "nano"])
def test_ffn_active_reference_equals_the_model(preset):
    cfg = ModelConfig.from_preset(preset)
    with torch.device("meta"):
        model = MiniDeepSeek(cfg)
    mtp = {id(p) for p in model.mtp.parameters()}
    ffn_total = sum(p.numel() for name, p in model.named_parameters() if ".mlp." in name and id(p) not in mtp)
    other = model.num_parameters() - ffn_total
    assert other + checks.reference_ffn_active_parameters(cfg) == model.num_parameters(active=True)


def test_ffn_active_reference_of_a_dense_model():
    cfg = ModelConfig.from_preset("nano", n_routed_experts=0, first_k_dense_replace=0, num_nextn_predict_layers=0)
    model = MiniDeepSeek(cfg)
    assert model.num_parameters(active=True) == model.num_parameters()
    assert checks.reference_ffn_active_parameters(cfg) == cfg.num_hidden_layers * 3 * cfg.hidden_size * cfg.intermediate_size


def test_combine_reference_equals_deepseek_moe():
    cfg = ModelConfig(hidden_size=16, moe_intermediate_size=8, n_routed_experts=8, n_shared_experts=2,
                      num_experts_per_tok=2, n_group=2, topk_group=1, routed_scaling_factor=2.5)
    moe = DeepSeekMoE(cfg, dispatch="loop")
    x = torch.randn(6, 16)
    experts = []
    for gate_up, down in moe.experts.per_expert():
        e = SwiGLU(16, 8)
        e.load_state_dict({"gate_proj.weight": gate_up[:8], "up_proj.weight": gate_up[8:], "down_proj.weight": down})
        experts.append(e)
    with torch.no_grad():
        r = moe.gate(x)
        got = checks.reference_combine_experts(x, moe.shared_experts, experts, r.weights, r.indices)
        torch.testing.assert_close(got, moe(x))


# ---------------------------------------------------------------- 05.1
def _gate_mistake(**switches):
    return lambda logits, bias, k, scale: _gate(logits, bias, k, scale, **switches)


def _reversed_slots(logits, bias, k, scale):
    w, i = checks.reference_sigmoid_topk_gate(logits, bias, k, scale)
    return w.flip(-1), i.flip(-1)  # same pairs, other order: still right


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_sigmoid_topk_gate), PASS, "right experts and weights"),
    (_reversed_slots, PASS, "right experts"),
    (lambda lg, b, k, s: list(checks.reference_sigmoid_topk_gate(lg, b, k, s)), PASS, "right experts"),
    (lambda lg, b, k, s: checks.reference_sigmoid_topk_gate(lg, b, k, s)[::-1], FAIL,
     "you returned (indices, weights)"),
    (_gate_mistake(biased_weights=True), FAIL, "the bias only chooses the experts"),
    (_gate_mistake(renormalise=False), FAIL, "not renormalised"),
    (_gate_mistake(scale=False), FAIL, "sum to 1, not to routed_scaling_factor"),
    (_gate_mistake(renormalise=False, scale=False), FAIL, "raw sigmoid affinities"),
    (_gate_mistake(score="softmax"), FAIL, "softmax"),
    (_gate_mistake(score="softmax", renormalise=False), FAIL, "softmax"),
    (_gate_mistake(bias_in_selection=False), FAIL, "sigmoid(logits) alone"),
    (_gate_mistake(bias_on_logits=True), FAIL, "added the bias to the logits"),
    (lambda lg, b, k, s: checks.reference_sigmoid_topk_gate(lg, b, k, s)[0], FAIL, "tuple (weights, indices)"),
    (lambda lg, b, k, s: checks.reference_sigmoid_topk_gate(lg, -b, k, s), FAIL, "token"),
    (lambda lg, b, k, s: (torch.ones(lg.shape[0], k), checks.reference_sigmoid_topk_gate(lg, b, k, s)[1]), FAIL,
     "experts are right but the weights are not"),
    (lambda lg, b, k, s: tuple(t.float() for t in checks.reference_sigmoid_topk_gate(lg, b, k, s)), FAIL, "integers"),
    (lambda lg, b, k, s: checks.reference_sigmoid_topk_gate(lg, b, k + 1, s), FAIL, "dimension 1 differs"),
    (_not_done, NOT_ATTEMPTED, "sigmoid_topk_gate"),
])
def test_check_sigmoid_topk_gate(fn, status, phrase, capsys):
    result = checks.check_sigmoid_topk_gate(fn)
    assert result.status == status, result.message
    assert phrase in result.message
    assert capsys.readouterr().out.strip() == result.line()


# ---------------------------------------------------------------- 05.2
def _mask_mistake(**switches):
    return lambda scores, G, kg: _group_mask(scores, G, kg, **switches)


def _top_topk_group_by_hand(scores, G, kg):
    """The group score taken as the sum of the group's top topk_group scores (instead of its top 2)."""
    T, E = scores.shape
    grouped = scores.view(T, G, E // G)
    kept = grouped.topk(kg, dim=-1).values.sum(-1).topk(kg, dim=-1).indices  # (T, kg)
    mask = torch.zeros(T, G, dtype=torch.bool).scatter_(1, kept, True)
    return mask[:, :, None].expand(T, G, E // G).reshape(T, E)


def _kept_experts_not_groups(scores, G, kg):
    idx = scores.topk(kg * scores.shape[1] // G, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_group_limited_mask), PASS, "V3's 8 groups"),
    (_mask_mistake(inverted=True), FAIL, "True marks the experts that are masked"),
    (_mask_mistake(group_score="max"), FAIL, "best expert"),
    (_mask_mistake(group_score="sum"), FAIL, "summed every score"),
    (_mask_mistake(group_score="top_topk_group_sum"), FAIL, "sum of its top topk_group scores"),
    (_top_topk_group_by_hand, FAIL, "a group's score is the sum of its top-2 experts' scores"),
    (_mask_mistake(interleaved=True), FAIL, "interleaved"),
    (_mask_mistake(worst=True), FAIL, "lowest scores"),
    (lambda s, G, kg: s.masked_fill(~checks.reference_group_limited_mask(s, G, kg), float("-inf")), FAIL,
     "masked scores"),
    (lambda s, G, kg: checks.reference_group_limited_mask(s, G, kg).float(), FAIL, "bool"),
    (_kept_experts_not_groups, FAIL, "Hint"),
    (lambda s, G, kg: checks.reference_group_limited_mask(s, G, kg)[:, :-1], FAIL, "dimension 1 differs"),
    (_not_done, NOT_ATTEMPTED, "group_limited_mask"),
])
def test_check_group_limited_mask(fn, status, phrase, capsys):
    result = checks.check_group_limited_mask(fn)
    assert result.status == status, result.message
    assert phrase in result.message
    assert capsys.readouterr().out.strip() == result.line()


# ---------------------------------------------------------------- 05.3
def _active_mistake(**switches):
    return lambda config: _ffn_active(config, **switches)


def _forgets_dense_models(config):
    d = config.hidden_size
    expert = 3 * d * config.moe_intermediate_size
    moe = config.n_routed_experts * d + (config.n_shared_experts + config.num_experts_per_tok) * expert
    n_dense = config.first_k_dense_replace
    return n_dense * 3 * d * config.intermediate_size + (config.num_hidden_layers - n_dense) * moe


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_ffn_active_parameters), PASS, "V3 and V2"),
    (lambda c: float(checks.reference_ffn_active_parameters(c)), PASS, "V3 and V2"),
    (lambda c: np.int64(checks.reference_ffn_active_parameters(c)), PASS, "V3 and V2"),
    (lambda c: torch.tensor(checks.reference_ffn_active_parameters(c)), PASS, "V3 and V2"),
    (_active_mistake(routed="all"), FAIL, "every routed expert"),
    (_active_mistake(shared=False), FAIL, "shared experts are missing"),
    (_active_mistake(dense="missing"), FAIL, "dense layers are missing"),
    (_active_mistake(dense="as_moe"), FAIL, "every layer as an MoE layer"),
    (_active_mistake(router=False), FAIL, "routers are missing"),
    (_active_mistake(matrices=2), FAIL, "three: gate, up and down"),
    (_active_mistake(mtp=True), FAIL, "multi-token-prediction"),
    (_forgets_dense_models, FAIL, "n_routed_experts = 0"),
    (lambda c: checks.reference_ffn_active_parameters(c) + 1, FAIL, "Hint"),
    (lambda c: str(checks.reference_ffn_active_parameters(c)), FAIL, "return a number"),
    (_not_done, NOT_ATTEMPTED, "ffn_active_parameters"),
])
def test_check_ffn_active_parameters(fn, status, phrase, capsys):
    result = checks.check_ffn_active_parameters(fn)
    assert result.status == status, result.message
    assert phrase in result.message
    assert capsys.readouterr().out.strip() == result.line()


# ---------------------------------------------------------------- 05.4
def _combine_mistake(**switches):
    return lambda x, shared, experts, w, i: _combine(x, shared, experts, w, i, **switches)


def _vectorised(x, shared, experts, weights, indices):
    """Right: every expert on every token, then gather the chosen ones."""
    all_out = torch.stack([e(x) for e in experts], dim=1)  # (T, E, H)
    chosen = all_out.gather(1, indices[..., None].expand(-1, -1, x.shape[-1]))  # (T, k, H)
    return shared(x) + (weights[..., None] * chosen).sum(1)


def _sorted_dispatch(x, shared, experts, weights, indices, *, by_unique=False):
    """Tokens sorted by expert, one group per expert; by_unique pairs unique(return_counts=True)'s groups with
    experts[0], experts[1], ... by position, though unique leaves out the experts no token chose."""
    k = indices.shape[1]
    flat = indices.flatten()  # (T k,)
    order = flat.argsort(stable=True)  # slots grouped by expert
    counts = flat.unique(return_counts=True)[1] if by_unique else torch.bincount(flat, minlength=len(experts))
    out = shared(x)
    for e, slots in enumerate(order.split(counts.tolist())):
        if slots.numel():
            tokens = slots // k
            out = out.index_add(0, tokens, weights.flatten()[slots, None] * experts[e](x[tokens]))
    return out


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_combine_experts), PASS, "matches"),
    (_vectorised, PASS, "matches"),
    (_sorted_dispatch, PASS, "matches"),
    (lambda *a: _sorted_dispatch(*a, by_unique=True), FAIL, "indices.unique(return_counts=True) lists only"),
    (_combine_mistake(present_by_position=True), FAIL, "paired with experts by position"),
    (lambda x, s, e, w, i: checks.reference_combine_experts(x, s, e, w, i).double(), PASS, "matches"),
    (lambda x, s, e, w, i: checks.reference_combine_experts(x, s, e, w, i) * (2 if i.shape[1] == 1 else 1), FAIL,
     "and k = 1: token 0 differs"),  # a case routes every token to a single expert
    (_combine_mistake(), PASS, "matches"),
    (_combine_mistake(use_weights=False), FAIL, "not weighted"),
    (_combine_mistake(use_shared=False), FAIL, "shared expert is missing"),
    (_combine_mistake(residual=True), FAIL, "added the input x"),
    (_combine_mistake(use_weights=False, use_shared=False), FAIL, "missing and the expert outputs"),
    (_combine_mistake(slot_as_expert=True), FAIL, "experts[indices[t, k]]"),
    (lambda x, s, e, w, i: 2 * checks.reference_combine_experts(x, s, e, w, i), FAIL, "token 0 differs"),
    (lambda x, s, e, w, i: x[:, :1], FAIL, "dimension 1 differs"),
    (_not_done, NOT_ATTEMPTED, "combine_experts"),
])
def test_check_combine_experts(fn, status, phrase, capsys):
    result = checks.check_combine_experts(fn)
    assert result.status == status, result.message
    assert phrase in result.message
    assert capsys.readouterr().out.strip() == result.line()


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    checks.check_combine_experts(checks.reference_combine_experts)
    assert torch.equal(torch.get_rng_state(), before)


def test_lesson05_checkers_are_registered_with_their_numbers():
    for k, name in enumerate(["sigmoid_topk_gate", "group_limited_mask", "ffn_active_parameters", "combine_experts"], 1):
        assert getattr(checks, f"check_{name}").__doc__.startswith(f"Exercise 05.{k}:")


# ---------------------------------------------------------------- in-place changes of the inputs
@pytest.mark.parametrize("check, reference, arg, name", [
    ("check_sigmoid_topk_gate", "reference_sigmoid_topk_gate", 1, "bias"),
    ("check_group_limited_mask", "reference_group_limited_mask", 0, "scores"),
    ("check_combine_experts", "reference_combine_experts", 4, "indices"),
])
def test_an_answer_that_changes_its_input_in_place_fails(check, reference, arg, name):
    assert_in_place_change_fails(checks, check, reference, arg, name)
