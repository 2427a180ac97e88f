"""Lesson 06 checkers: the reference passes, known-wrong answers fail with their hint, stubs are not attempted."""


import pytest
import torch
from learner import as_learner, assert_in_place_change_fails

from mlakit.course import checks
from mlakit.course.checks import FAIL, NOT_ATTEMPTED, PASS
from mlakit.moe import Router, expert_balance_loss, max_violation, sequence_balance_loss


def _not_done(*args, **kwargs):
    raise NotImplementedError


def _assert_result(result, status, phrase, capsys):
    assert result.status == status, result.message
    assert phrase in result.message, result.message
    assert capsys.readouterr().out.strip() == result.line()


# ---------------------------------------------------------------- 06.1
def _mean_of(counts):
    return counts.float().mean(-1)


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_max_violation), PASS, "right on 5 inputs"),
    (lambda c: (c.float().amax(-1) - _mean_of(c)) / _mean_of(c), PASS, "right"),
    (lambda c: (c.float().amax(-1) - _mean_of(c)) / c.float().amax(-1), FAIL, "divided by the largest load"),
    (lambda c: c.float().amax(-1) / _mean_of(c), FAIL, "forgot to subtract the mean"),
    (lambda c: c.float().amax(-1) - _mean_of(c), FAIL, "excess in tokens"),
    (lambda c: (_mean_of(c) - c.float().amin(-1)) / _mean_of(c), FAIL, "UNDERloaded"),
    (lambda c: c.float().std(-1) / _mean_of(c), FAIL, "coefficient of variation"),
    (lambda c: (c.float().amax(-1) - _mean_of(c)) / c.float().sum(-1), FAIL, "total load"),
    (lambda c: (c.float().amax(0) - c.float().mean(0)) / c.float().mean(0), FAIL, "last dimension"),
    (lambda c: (c.float().max() - c.float().mean()) / c.float().mean(), FAIL, "dim=-1"),
    (lambda c: (c.amax(-1) - c.mean(-1)) / c.mean(-1), FAIL, "counts.float()"),
    (lambda c: max_violation(c) + 0.5, FAIL, "Hint"),
    (lambda c: "1.0", FAIL, "torch.Tensor"),
    (_not_done, NOT_ATTEMPTED, "max_violation"),
])
def test_check_max_violation(fn, status, phrase, capsys):
    _assert_result(checks.check_max_violation(fn), status, phrase, capsys)


def test_max_violation_failure_shows_where_the_values_differ(capsys):
    def wrong_last_step(c):  # right, except for the last step of a (steps, layers, experts) history
        out = max_violation(c)
        return torch.cat([out[:-1], out[-1:] + 1]) if c.dim() == 3 else out

    result = checks.check_max_violation(wrong_last_step)
    _assert_result(result, FAIL, "for counts of shape (5, 2, 16): at [4, 0] you get", capsys)
    assert "(2 of 10 entries differ)" in result.message


def test_max_violation_accepts_a_python_number_for_one_layer(capsys):
    def per_row(c):
        if c.dim() == 1:
            return float(max_violation(c))
        return max_violation(c)
    _assert_result(checks.check_max_violation(per_row), PASS, "right", capsys)


# ---------------------------------------------------------------- 06.2
def _step(bias, counts, gamma, mean):
    return bias + gamma * torch.sign(mean - counts.float())


def _row_mean(counts):
    return counts.float().mean(-1, keepdim=True)


def _in_place_no_return(bias, counts, gamma):
    bias += gamma * torch.sign(_row_mean(counts) - counts.float())


def _in_place_and_return(bias, counts, gamma):
    bias += gamma * torch.sign(_row_mean(counts) - counts.float())
    return bias


def _through_router(bias, counts, gamma):
    """The library's Router.update_bias, one router per row."""
    rows = bias.reshape(-1, bias.shape[-1])
    out = []
    for b, c in zip(rows, counts.reshape(-1, counts.shape[-1]), strict=True):
        router = Router(checks_config(b.numel()))
        router.e_score_correction_bias.copy_(b)
        router.update_bias(c, gamma)
        out.append(router.e_score_correction_bias.clone())
    return torch.stack(out).reshape(bias.shape)


def checks_config(num_experts):
    from mlakit import ModelConfig
    return ModelConfig.from_preset("nano", n_routed_experts=num_experts, n_group=1, topk_group=1)


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_bias_update), PASS, "overloaded experts lose gamma"),
    (_through_router, PASS, "one step per layer"),
    (_in_place_and_return, PASS, "one step per layer"),
    (lambda b, c, g: _step(b, c, -g, _row_mean(c)), FAIL, "sign is reversed"),
    (lambda b, c, g: _step(b, c, g, c.float().mean(0, keepdim=True)), FAIL, "mean over the layers"),
    (lambda b, c, g: _step(b, c, g, c.float().mean()), FAIL, "one mean over all layers"),
    (lambda b, c, g: checks.reference_bias_update(b, c, g).double(), PASS, "one step per layer"),
    (lambda b, c, g: b.clone(), FAIL, "did not move"),
    (lambda b, c, g: b + g * (_row_mean(c) - c.float()), FAIL, "proportional"),
    (lambda b, c, g: b + g * torch.where(c.float() > _row_mean(c), -1.0, 1.0), FAIL, "exactly at the mean"),
    (lambda b, c, g: b + g * torch.sign(_row_mean(c) - c.float()) / c.shape[-1], FAIL, "divided by the number"),
    (lambda b, c, g: b + g * torch.sign(c.mean(-1, keepdim=True) - c), FAIL, "counts.float()"),
    (_in_place_no_return, FAIL, "returned None"),
    (lambda b, c, g: b[..., :-1], FAIL, "shape"),
    (lambda b, c, g: b + 1.0, FAIL, "Hint"),
    (_not_done, NOT_ATTEMPTED, "bias_update"),
])
def test_check_bias_update(fn, status, phrase, capsys):
    _assert_result(checks.check_bias_update(fn), status, phrase, capsys)


def test_bias_update_failure_shows_where_the_values_differ(capsys):
    def wrong_in_the_last_layer(bias, counts, gamma):
        out = checks.reference_bias_update(bias, counts, gamma)
        return out + (torch.arange(out.shape[0])[:, None] == out.shape[0] - 1) * gamma if out.dim() == 2 else out

    result = checks.check_bias_update(wrong_in_the_last_layer)
    _assert_result(result, FAIL, "at [1, 0] you get", capsys)
    assert "(4 of 8 entries differ)" in result.message


# ---------------------------------------------------------------- 06.3
def _counts(indices, E):
    B = indices.shape[0]
    flat = indices.reshape(B, -1)
    return torch.zeros(B, E).scatter_add_(1, flat, torch.ones(flat.shape))  # (B, E)


def _by_hand(scores, indices, alpha, *, factor="full", normalise=True, per_sequence=True, detach=False,
             reduce="mean"):
    B, T, E = scores.shape
    k = indices.shape[-1]
    s = scores / scores.sum(-1, keepdim=True) if normalise else scores
    if detach:
        s = s.detach()
    if not per_sequence:
        s, indices, B, T = s.reshape(1, B * T, E), indices.reshape(1, B * T, k), 1, B * T
    scale = {"full": E / (k * T), "none": 1.0, "no_k": E / T, "share": 1 / (k * T)}[factor]
    per_seq = (scale * _counts(indices, E) * s.mean(1)).sum(-1)  # (B,)
    return alpha * (per_seq.mean() if reduce == "mean" else per_seq.sum())


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_seq_balance_loss), PASS, "value and gradient match"),
    (_by_hand, PASS, "match"),
    (lambda s, i, a: sequence_balance_loss(s.reshape(-1, s.shape[-1]), i.reshape(-1, i.shape[-1]), a, s.shape[1]),
     PASS, "match"),
    (lambda s, i, a: _by_hand(s, i, a, factor="none"), FAIL, "N_r / (K_r T)"),
    (lambda s, i, a: _by_hand(s, i, a, factor="no_k"), FAIL, "not by K_r"),
    (lambda s, i, a: _by_hand(s, i, a, factor="share"), FAIL, "without the factor N_r"),
    (lambda s, i, a: _by_hand(s, i, a, normalise=False), FAIL, "raw affinities"),
    (lambda s, i, a: expert_balance_loss(s, i, a), FAIL, "raw affinities"),
    (lambda s, i, a: _by_hand(s, i, a, per_sequence=False), FAIL, "whole batch as one sequence"),
    (lambda s, i, a: _by_hand(s, i, 1.0), FAIL, "alpha is missing"),
    (lambda s, i, a: _by_hand(s, i, a, reduce="sum"), FAIL, "summed the sequences"),
    (lambda s, i, a: _by_hand(s, i, a, detach=True), FAIL, "no gradient reaches the scores"),
    (lambda s, i, a: _by_hand(s, i, a).item(), FAIL, "no gradient"),
    (lambda s, i, a: _by_hand(s, i, a).expand(3), FAIL, "scalar"),
    (lambda s, i, a: _by_hand(s, i, a) * 1.5, FAIL, "Hint"),
    (_not_done, NOT_ATTEMPTED, "seq_balance_loss"),
])
def test_check_seq_balance_loss(fn, status, phrase, capsys):
    _assert_result(checks.check_seq_balance_loss(fn), status, phrase, capsys)


def test_checkers_are_numbered_for_the_grader():
    for name, number in (("check_max_violation", "06.1"), ("check_bias_update", "06.2"),
                         ("check_seq_balance_loss", "06.3")):
        assert getattr(checks, name).__doc__.startswith(f"Exercise {number}:")


# ---------------------------------------------------------------- in-place changes of the inputs
@pytest.mark.parametrize("check, reference, arg, name", [
    ("check_max_violation", "reference_max_violation", 0, "counts"),
    ("check_bias_update", "reference_bias_update", 1, "counts"),
    ("check_seq_balance_loss", "reference_seq_balance_loss", 1, "indices"),
])
def test_an_answer_that_changes_its_input_in_place_fails(check, reference, arg, name):
    assert_in_place_change_fails(checks, check, reference, arg, name)
