"""Lesson 11 checkers: the references equal the library and hand-computed values, known-wrong answers fail with
their hint, stubs are not attempted, the library's own functions are refused."""

import math

import pytest
from learner import assert_checker_basics

from mlakit.course import checks
from mlakit.course.checks import FAIL
from mlakit.course.checks.lesson11 import (
    _CHOOSE_MISTAKES,
    _COSTS_MISTAKES,
    _STRICT_MISTAKES,
    CHOOSE_CASES,
    STRICT_CASES,
    _choose,
    _costs,
    _reward,
    _run_cases,
)
from mlakit.data import AdditionTask, Problem, verify_sloppy
from mlakit.viz.rl_costs import tradeoff


# ------------------------------------------------- references against the library and hand values
def test_strict_reward_equals_the_tasks_verifier():
    task = AdditionTask(1, 2)
    problems = {"132": Problem(47, 85), "7": Problem(0, 7)}
    for answer, completion in STRICT_CASES:
        assert checks.reference_strict_reward(answer, completion) == float(task.verify(problems[answer], completion))
    # and the sloppy verifier accepts what the strict one refuses
    assert verify_sloppy("132", "131 132") and checks.reference_strict_reward("132", "131 132") == 0.0


def test_run_costs_by_hand_and_equal_to_the_plot_helper():
    rows = [{"step": 0, "kl": 0.0, "acc_arithmetic": 0.9, "acc_toolcall": 1.0}, {"step": 1, "kl": 0.2},
            {"step": 2, "kl": 0.4, "acc_arithmetic": 0.95, "acc_toolcall": 0.7}]
    costs = checks.reference_run_costs(rows, 2)
    assert math.isclose(costs["arithmetic_change"], 0.05) and math.isclose(costs["toolcall_change"], -0.3)
    assert math.isclose(costs["kl"], 0.3)
    for rows, window in _run_cases():
        ref, lib = checks.reference_run_costs(rows, window), tradeoff(rows, window)
        assert all(math.isclose(ref[k], lib[k], abs_tol=1e-12) for k in ref)


def test_choose_beta_by_hand():
    costs, budget = CHOOSE_CASES[0]
    assert checks.reference_choose_beta(costs, budget) == 0.04  # loses exactly the budget: allowed
    assert checks.reference_choose_beta(costs, 0.5) == 0.0
    assert checks.reference_choose_beta(CHOOSE_CASES[2][0], 0.05) is None


# ------------------------------------------------- the references pass, stubs, errors, the library refused
CHECKS = [
    (checks.check_strict_reward, checks.reference_strict_reward),
    (checks.check_run_costs, checks.reference_run_costs),
    (checks.check_choose_beta, checks.reference_choose_beta),
]


@pytest.mark.parametrize("check, reference", CHECKS)
def test_reference_passes_and_stub_is_not_attempted(check, reference, capsys):
    assert_checker_basics(check, reference, "11", lambda: capsys.readouterr().out, refused=(reference,))


def test_the_library_tradeoff_is_refused():
    refused = checks.check_run_costs(tradeoff)
    assert refused.status == FAIL and "library's own" in refused.message


# ------------------------------------------------- every listed mistake fails with its own hint
@pytest.mark.parametrize("kind, hint", _STRICT_MISTAKES)
def test_strict_reward_mistakes(kind, hint):
    result = checks.check_strict_reward(lambda a, c: _reward(a, c, kind=kind))
    assert result.status == FAIL and hint in result.message, result.message


@pytest.mark.parametrize("kind, hint", _COSTS_MISTAKES)
def test_run_costs_mistakes(kind, hint):
    result = checks.check_run_costs(lambda rows, w: _costs(rows, w, kind=kind))
    assert result.status == FAIL and hint in result.message, result.message


@pytest.mark.parametrize("kind, hint", _CHOOSE_MISTAKES)
def test_choose_beta_mistakes(kind, hint):
    result = checks.check_choose_beta(lambda c, b: _choose(c, b, kind=kind))
    assert result.status == FAIL and hint in result.message, result.message


def test_wrong_types_and_unknown_mistakes_fail_with_a_general_hint():
    assert "return a float" in checks.check_strict_reward(lambda a, c: a in c).message
    assert "keys" in checks.check_run_costs(lambda rows, w: [0, 0, 0]).message
    always_one = checks.check_strict_reward(lambda a, c: 1.0)
    assert always_one.status == FAIL and "Hint" in always_one.message
    first = checks.check_choose_beta(lambda c, b: next(iter(c)))
    assert first.status == FAIL and "Hint" in first.message


def test_mistakes_differ_from_the_reference_and_from_each_other():
    ref = [checks.reference_strict_reward(a, c) for a, c in STRICT_CASES]
    variants = [[_reward(a, c, kind=k) for a, c in STRICT_CASES] for k, _ in _STRICT_MISTAKES]
    assert all(v != ref for v in variants) and len({tuple(v) for v in variants}) == len(variants)
    ref = [checks.reference_choose_beta(c, b) for c, b in CHOOSE_CASES]
    variants = [[_choose(c, b, kind=k) for c, b in CHOOSE_CASES] for k, _ in _CHOOSE_MISTAKES]
    assert all(v != ref for v in variants) and len({tuple(v) for v in variants}) == len(variants)
