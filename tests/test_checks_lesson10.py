"""Lesson 10 checkers: the references equal the library and hand-computed values, known-wrong answers fail with
their hint, boundary cases show each diagnosed mistake, stubs are not attempted, the library's own functions are
refused, float64 answers pass."""

import math

import pytest
import torch
from learner import assert_checker_basics

from mlakit import rl
from mlakit.course import checks
from mlakit.course.checks import FAIL, PASS
from mlakit.course.checks.lesson10 import _advantages, _aggregate, _k3, _objective, _objective_cases


# ------------------------------------------------- references against hand values and the library
def test_advantages_of_the_hand_example():
    # mean 0.5, unbiased std sqrt(1/3) = 0.57735: +-0.5 / (0.57735 + 1e-4) = +-0.86588
    adv = checks.reference_group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    torch.testing.assert_close(adv, torch.tensor([0.86588, -0.86588, -0.86588, 0.86588]), atol=1e-5, rtol=0)
    equal = checks.reference_group_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2)
    assert equal.tolist() == [0.0, 0.0, 0.0, 0.0]  # equal rewards: 0, not NaN


@pytest.mark.parametrize("rewards, G", [([1.0, 0.0, 0.0, 1.0], 4), ([2.0, 1.0, 1.0, 0.0, 1.0, 1.0], 3),
                                        ([0.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.0, 0.0], 2)])
def test_advantage_reference_equals_the_library(rewards, G):
    r = torch.tensor(rewards)
    torch.testing.assert_close(checks.reference_group_advantages(r, G), rl.group_advantages(r, G, "group"))


def test_objective_reference_is_minus_the_librarys_loss():
    for logprobs, old, A, eps, eps_high in _objective_cases():
        config = rl.GRPOConfig(epsilon=eps, epsilon_high=eps_high, loss_type="dapo", beta=0.0)
        mask = torch.ones_like(logprobs, dtype=torch.bool)
        loss, _ = rl.grpo_loss(logprobs, old, A, mask, config)
        objective = checks.reference_clipped_objective(logprobs, old, A, eps, eps_high)
        torch.testing.assert_close(-objective.mean(), loss)


def test_objective_branches_by_hand():
    # rho = 1.5 (log 1.5): A = +1 is capped at 1 + 0.28; A = -1 keeps the full -1.5 (pessimistic side)
    lp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5], [1.25]]))
    old = torch.zeros(5, 1)
    A = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0])
    out = checks.reference_clipped_objective(lp, old, A, 0.2, 0.28)
    torch.testing.assert_close(out.squeeze(1), torch.tensor([1.28, -1.5, -0.8, 0.5, 1.25]))


def test_k3_reference_equals_the_library_and_a_hand_value():
    x = torch.tensor([[0.1]])  # log pi_ref - log pi = 0.1: e^0.1 - 0.1 - 1 = 0.0051709
    torch.testing.assert_close(checks.reference_kl_k3(torch.zeros(1, 1), x), torch.tensor([[0.0051709]]),
                               atol=1e-7, rtol=0)
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(5, 9, generator=g) * 5
    ref = lp + torch.randn(5, 9, generator=g)
    torch.testing.assert_close(checks.reference_kl_k3(lp, ref), rl.kl_k3(lp, ref))
    assert bool((checks.reference_kl_k3(lp, ref) >= 0).all())


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_aggregate_reference_equals_the_library(loss_type):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 1, 3, 4])[:, None]
    torch.testing.assert_close(checks.reference_aggregate_loss(x, mask, loss_type, 9),
                               rl.aggregate_loss(x, mask, loss_type, 9))


def test_aggregations_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert math.isclose(checks.reference_aggregate_loss(x, mask, "grpo", 4).item(), (2.0 + 4.0) / 2)
    assert math.isclose(checks.reference_aggregate_loss(x, mask, "dapo", 4).item(), 10.0 / 4)
    assert math.isclose(checks.reference_aggregate_loss(x, mask, "dr_grpo", 4).item(), 10.0 / 8)


# ------------------------------------------------- the references pass, stubs, errors, the library refused
CHECKS = [
    (checks.check_group_advantages, checks.reference_group_advantages, rl.group_advantages),
    (checks.check_clipped_objective, checks.reference_clipped_objective, None),
    (checks.check_kl_k3, checks.reference_kl_k3, rl.kl_k3),
    (checks.check_aggregate_loss, checks.reference_aggregate_loss, rl.aggregate_loss),
]


@pytest.mark.parametrize("check, reference, library", CHECKS)
def test_reference_passes_and_stub_is_not_attempted(check, reference, library, capsys):
    assert_checker_basics(check, reference, "10", lambda: capsys.readouterr().out,
                          refused=(reference,) if library is None else (reference, library))


# ------------------------------------------------- 10.1 group advantages
@pytest.mark.parametrize("switches, hint", [
    (dict(unbiased=False), "population one"),
    (dict(scale="none"), "Dr. GRPO"),
    (dict(centre="none"), "not centred"),
    (dict(centre="batch", scale="batch"), "of the whole batch"),
    (dict(centre="batch"), "whole batch's. Hint: centre"),
    (dict(scale="batch"), "std is the whole batch's"),
    (dict(grouping="interleaved"), "prompt-major"),
    (dict(eps=1e-8), "not 1e-4"),
])
def test_advantage_mistakes(switches, hint):
    result = checks.check_group_advantages(lambda r, G: _advantages(r, G, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_advantages_without_epsilon_give_nan_on_equal_rewards():
    def no_eps(rewards, G):
        grouped = rewards.view(-1, G)
        return ((grouped - grouped.mean(1, keepdim=True)) / grouped.std(1, keepdim=True)).reshape(-1)

    result = checks.check_group_advantages(no_eps)
    assert result.status == FAIL and "NaN" in result.message and "1e-4" in result.message


@pytest.mark.parametrize("right", [
    lambda r, G: checks.reference_group_advantages(r, G).double(),
    lambda r, G: ((r.view(-1, G).double() - r.view(-1, G).double().mean(1, keepdim=True))
                  / (r.view(-1, G).double().std(1, keepdim=True) + 1e-4)).reshape(-1),
])
def test_advantages_in_float64_pass(right):
    assert checks.check_group_advantages(right).status == PASS


def test_advantages_changed_in_place_are_refused():
    def in_place(rewards, G):
        rewards -= rewards.view(-1, G).mean(1).repeat_interleave(G)
        return rewards / (rewards.view(-1, G).std(1).repeat_interleave(G) + 1e-4)

    result = checks.check_group_advantages(in_place)
    assert result.status == FAIL and "in place" in result.message


# ------------------------------------------------- 10.2 the clipped objective
@pytest.mark.parametrize("switches, hint", [
    (dict(sign=-1.0), "sign is flipped"),
    (dict(use_min="none"), "without the min"),
    (dict(use_min="max"), "max instead of min"),
    (dict(clip=False), "not clipped"),
    (dict(high="epsilon"), "upper clip uses epsilon"),
    (dict(low="epsilon_high"), "lower clip uses epsilon_high"),
    (dict(low="epsilon_high", high="epsilon"), "swapped"),
    (dict(ratio="reversed"), "upside down"),
    (dict(ratio="log"), "log-ratio"),
    (dict(broadcast="columns"), "advantages[:, None]"),
])
def test_objective_mistakes(switches, hint):
    result = checks.check_clipped_objective(lambda lp, old, A, e, eh: _objective(lp, old, A, e, eh, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_objective_cases_take_every_branch():
    # across the cases, each side of the min and each bound of the clip decides some token
    seen = set()
    for lp, old, A, eps, eps_high in _objective_cases():
        rho = torch.exp(lp - old)
        a = A[:, None].expand_as(rho)
        seen |= {"capped high" for _ in [0] if bool(((rho > 1 + eps_high) & (a > 0)).any())}
        seen |= {"capped low" for _ in [0] if bool(((rho < 1 - eps) & (a < 0)).any())}
        seen |= {"pessimistic high" for _ in [0] if bool(((rho > 1 + eps_high) & (a < 0)).any())}
        seen |= {"pessimistic low" for _ in [0] if bool(((rho < 1 - eps) & (a > 0)).any())}
        seen |= {"between eps and eps_high" for _ in [0]
                 if eps_high > eps and bool(((rho > 1 + eps) & (rho < 1 + eps_high) & (a > 0)).any())}
    assert seen == {"capped high", "capped low", "pessimistic high", "pessimistic low", "between eps and eps_high"}


def test_objective_in_float64_passes():
    def in_float64(lp, old, A, eps, eps_high):
        rho = torch.exp(lp.double() - old.double())
        a = A.double()[:, None]
        return torch.minimum(rho * a, rho.clamp(1 - eps, 1 + eps_high) * a)

    assert checks.check_clipped_objective(in_float64).status == PASS


# ------------------------------------------------- 10.3 k3
@pytest.mark.parametrize("kind, hint", [
    ("k1", "k1"),
    ("minus_k1", "log(pi_ref / pi_theta) alone"),
    ("reversed", "upside down"),
    ("k2", "k2"),
    ("no_minus_one", "-1 is missing"),
    ("plus_x", "wrong sign"),
])
def test_k3_mistakes(kind, hint):
    result = checks.check_kl_k3(lambda lp, ref: _k3(lp, ref, kind=kind))
    assert result.status == FAIL and hint in result.message, result.message


def test_k3_rounding_below_zero_is_diagnosed():
    def naive(lp, ref):
        x = ref - lp
        return torch.exp(x) - x - 1  # float32: tiny negatives near x = 0

    result = checks.check_kl_k3(naive)
    assert result.status == FAIL and "expm1" in result.message and "negative" in result.message


def test_k3_in_float64_passes():
    def in_float64(lp, ref):
        x = ref.double() - lp.double()
        return torch.exp(x) - x - 1

    assert checks.check_kl_k3(in_float64).status == PASS


def test_k3_must_be_zero_at_equality():
    result = checks.check_kl_k3(lambda lp, ref: checks.reference_kl_k3(lp, ref) + 1e-9)
    assert result.status == FAIL and "exactly 0" in result.message


# ------------------------------------------------- 10.4 aggregation
@pytest.mark.parametrize("kind, hint", [
    ("mean_all", "padding is averaged in"),
    ("unmasked_sum", "padding's losses are summed in"),
    ("swap", "swapped"),
    ("drgrpo_tokens", "dr_grpo divides by the number of tokens"),
    ("drgrpo_row", "does not average over the N completions"),
    ("grpo_sum", "sums the per-completion means"),
])
def test_aggregate_mistakes(kind, hint):
    result = checks.check_aggregate_loss(lambda x, m, t, L: _aggregate(x, m, t, L, kind=kind).float())
    assert result.status == FAIL and hint in result.message, result.message


def test_aggregate_must_be_a_scalar_tensor_and_float64_passes():
    result = checks.check_aggregate_loss(lambda x, m, t, L: float(checks.reference_aggregate_loss(x, m, t, L)))
    assert result.status == FAIL and "scalar torch.Tensor" in result.message
    result = checks.check_aggregate_loss(lambda x, m, t, L: _aggregate(x, m, t, L))  # float64
    assert result.status == PASS
