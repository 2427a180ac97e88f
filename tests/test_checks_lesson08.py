"""Lesson 08 checkers: the references equal the library, known-wrong answers fail with their hint, stubs are not
attempted, the library's own functions are refused."""

import math
import random
import re

import numpy as np
import pytest
import torch
from learner import assert_checker_basics

from mlakit import data
from mlakit.course import checks
from mlakit.course.checks import FAIL, PASS
from mlakit.course.checks.lesson08 import (
    _NGRAM_MISTAKES,
    CANDIDATE_CASES,
    NGRAM_CASES,
    PASS_AT_K_CASES,
    R1_CASES,
    _candidate_probability,
    _ngram_contamination,
    _pass_at_k,
)


# ------------------------------------------------- references against the library and by hand
def test_pass_at_k_reference_equals_the_library_and_hand_values():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert math.isclose(checks.reference_pass_at_k(n, c, k), data.pass_at_k(n, c, k), abs_tol=1e-12)
    assert checks.reference_pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert checks.reference_pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 3 of the 6 pairs hold the correct one
    assert checks.reference_pass_at_k(10, 8, 3) == 1.0 and checks.reference_pass_at_k(10, 0, 10) == 0.0
    for case in PASS_AT_K_CASES:
        assert math.isclose(checks.reference_pass_at_k(*case), data.pass_at_k(*case), rel_tol=1e-9, abs_tol=1e-12)


def _r1_strings(rng: random.Random, count: int) -> list[str]:
    """Random completions built from R1's tags, answers, reasoning and stray text."""
    parts = ["<think>", "</think>", "<answer>", "</answer>", "132", " ", "\n", "x", "", "so "]
    return ["".join(rng.choice(parts) for _ in range(rng.randint(0, 8))) for _ in range(count)]


def test_r1_answer_reference_is_the_format_reward_and_its_answer():
    cases = [c for c, *_ in R1_CASES] + _r1_strings(random.Random(0), 3000)
    for completion in cases:
        library = data.last_answer(completion) if data.format_ok(completion) else None
        assert checks.reference_r1_answer(completion) == library, completion
    assert all(checks.reference_r1_answer(c) == want for c, want, *_ in R1_CASES)


def test_ngram_reference_equals_decontaminate_on_word_problems():
    task = data.get_task("wordproblem")
    problems = list(task.generate(120, seed=3))
    rng = random.Random(1)
    evals = [p.prompt for p in problems[:20]]
    train = [p.prompt + p.answer for p in problems[20:]] + [task.rephrase(p, rng, True).prompt for p in problems[:20]]
    for n in (3, 8, 13, 20):
        assert checks.reference_ngram_contamination(train, evals, n) == data.decontaminate(train, evals, n=n).indices
    for n, train, evals in NGRAM_CASES:
        expected = data.decontaminate(train, evals, n=n).indices if evals else []
        assert checks.reference_ngram_contamination(train, evals, n) == expected


def test_candidate_probability_reference_is_the_s_curve():
    for s, b, r in CANDIDATE_CASES + [(0.25, 7, 3), (0.99, 1, 128)]:
        assert math.isclose(checks.reference_candidate_probability(s, b, r), data.s_curve(s, b, r), abs_tol=1e-12)


# ------------------------------------------------- the references pass, stubs are not attempted
CHECKS = [
    (checks.check_pass_at_k, checks.reference_pass_at_k, data.pass_at_k),
    (checks.check_r1_answer, checks.reference_r1_answer, data.strict_answer),
    (checks.check_ngram_contamination, checks.reference_ngram_contamination, data.decontaminate),
    (checks.check_candidate_probability, checks.reference_candidate_probability, data.s_curve),
]


@pytest.mark.parametrize("check, reference, library", CHECKS, ids=lambda x: getattr(x, "__name__", "?"))
def test_reference_passes_stub_is_not_attempted_library_is_refused(check, reference, library, capsys):
    assert_checker_basics(check, reference, "08", lambda: capsys.readouterr().out, refused=(reference, library))


def test_a_missing_function_is_named():
    result = checks.check_pass_at_k(None)
    assert result.status == FAIL and "not defined" in result.message


# ------------------------------------------------- 08.1 pass@k
@pytest.mark.parametrize("kind, hint", [
    ("c/n", "share of correct samples, whatever k is"),
    ("with_replacement", "1 - (1 - c/n)^k"),
    ("all_wrong", "all k samples are wrong"),
    ("floor_division", "rounds their ratio down"),
    ("swapped", "all k samples are correct"),
    ("union_bound", "union bound"),
])
def test_pass_at_k_mistakes(kind, hint):
    result = checks.check_pass_at_k(lambda n, c, k: _pass_at_k(n, c, k, kind=kind))
    assert result.status == FAIL and hint in result.message, result.message
    assert re.search(r"pass_at_k\(\d+, \d+, \d+\) = ", result.message)


def test_pass_at_k_right_answers_in_other_forms_pass():
    def product_form(n, c, k):
        if n - c < k:
            return 1
        return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))

    assert checks.check_pass_at_k(product_form).status == PASS
    assert checks.check_pass_at_k(lambda n, c, k: np.float64(checks.reference_pass_at_k(n, c, k))).status == PASS
    assert checks.check_pass_at_k(lambda n, c, k: torch.tensor(checks.reference_pass_at_k(n, c, k))).status == PASS


def test_pass_at_k_boundaries_get_their_own_hint():
    def no_boundary(n, c, k):  # right except that it forgets pass@k = 1 when n - c < k
        if n - c < k:
            return 0.5
        return checks.reference_pass_at_k(n, c, k)

    result = checks.check_pass_at_k(no_boundary)
    assert result.status == FAIL and "every choice of k samples" in result.message

    def zero_wrong(n, c, k):
        return 0.5 if c == 0 else checks.reference_pass_at_k(n, c, k)

    result = checks.check_pass_at_k(zero_wrong)
    assert result.status == FAIL and "no correct sample" in result.message

    def float_factorials(n, c, k):
        f = lambda m: float(math.factorial(m))  # noqa: E731 - overflows at n = 2000
        choose = lambda a, b: f(a) / (f(b) * f(a - b)) if b <= a else 0.0  # noqa: E731
        return 1 - choose(n - c, k) / choose(n, k)

    result = checks.check_pass_at_k(float_factorials)
    assert result.status == FAIL and "pass_at_k(200, 13, 50) raised OverflowError" in result.message
    assert "math.comb" in result.message

    result = checks.check_pass_at_k(lambda n, c, k: float("nan") if n == 2000 else checks.reference_pass_at_k(n, c, k))
    assert result.status == FAIL and "is nan" in result.message
    result = checks.check_pass_at_k(lambda n, c, k: "0.3")
    assert result.status == FAIL and "should be a number" in result.message


# ------------------------------------------------- 08.2 R1's answer, strictly
def _first_block(completion):
    m = re.search(r"<answer>(.*?)</answer>", completion, re.S)
    return m.group(1).strip() if m else None


def _greedy(completion):
    m = re.fullmatch(r"\s*<think>(.*?)</think>\s*<answer>(.*)</answer>\s*", completion, re.S)
    return m.group(2).strip() or None if m else None


def _no_strip(completion):
    m = re.fullmatch(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", completion, re.S)
    if m is None or any(t in m.group(1) + m.group(2) for t in ("<think>", "</think>", "<answer>", "</answer>")):
        return None
    return m.group(2) if m.group(2).strip() else None


def _empty_string(completion):
    m = re.fullmatch(r"\s*<think>([^<]*)</think>\s*<answer>([^<]*)</answer>\s*", completion)
    return m.group(2).strip() if m else None


def _trailing_allowed(completion):  # right, except that anything after the last </answer> is ignored
    end = completion.rfind("</answer>")
    return checks.reference_r1_answer(completion[:end + len("</answer>")] if end >= 0 else completion)


def _digits(completion):
    answer = checks.reference_r1_answer(completion)
    found = re.findall(r"\d+", answer or "")
    return found[-1] if found else answer


def _think_optional(completion):
    return data.strict_answer(completion) if "<answer>" in completion else None


def _tags_inside(completion):  # right, except that it never looks for answer tags inside the think block
    m = re.fullmatch(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", completion, re.S)
    if m is None or "<think>" in m.group(1) or "</think>" in m.group(1) or any(t in m.group(2) for t in ("<think>", "</think>", "<answer>", "</answer>")):
        return None
    return m.group(2).strip() or None


def _plain_too(completion):
    return data.strict_answer(completion) if "<think>" in completion or "<" not in completion else None


@pytest.mark.parametrize("answer, hint", [
    (_first_block, "two answer blocks hedges"),
    (lambda c: data.last_answer(c), "two answer blocks hedges"),
    (_greedy, "non-greedy"),
    (_no_strip, "strip the whitespace"),
    (_empty_string, "not an empty string"),
    (_trailing_allowed, "text after the answer block"),
    (_digits, "not the digits found in it"),
    (_think_optional, "reasoning in a think block"),
    (_tags_inside, "answer tag inside the think block"),
    (_plain_too, "without tags is not in R1's format"),
])
def test_r1_answer_mistakes(answer, hint):
    result = checks.check_r1_answer(answer)
    assert result.status == FAIL and hint in result.message, result.message


def test_r1_answer_wrong_type_is_named():
    result = checks.check_r1_answer(lambda c: ["132"])
    assert result.status == FAIL and "return the answer as a str" in result.message


# ------------------------------------------------- 08.3 n-gram decontamination
@pytest.mark.parametrize("switches, hint", [(switches, hint.split(". Hint")[0][:40]) for switches, hint in _NGRAM_MISTAKES])
def test_ngram_mistakes(switches, hint):
    result = checks.check_ngram_contamination(lambda tr, ev, n: _ngram_contamination(tr, ev, n, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_ngram_other_mistakes_and_forms():
    def substring(train, evals, n):  # GPT-4-style whole-item containment, not n-grams
        return [i for i, t in enumerate(train) if any(e.lower() in t.lower() for e in evals)]

    result = checks.check_ngram_contamination(substring)
    assert result.status == FAIL and "Training text 4 ('12+5=17') shares no run of 8" in result.message

    def single_words(train, evals, n):  # any shared word
        seen = {w for e in evals for w in data.words(e)}
        return [i for i, t in enumerate(train) if seen & set(data.words(t))]

    result = checks.check_ngram_contamination(single_words)
    assert result.status == FAIL and "shares no run of" in result.message

    as_set = checks.check_ngram_contamination(lambda tr, ev, n: set(checks.reference_ngram_contamination(tr, ev, n)))
    assert as_set.status == PASS
    twice = checks.check_ngram_contamination(lambda tr, ev, n: 2 * checks.reference_ngram_contamination(tr, ev, n))
    assert twice.status == FAIL and "lists an index twice" in twice.message
    result = checks.check_ngram_contamination(lambda tr, ev, n: "1, 2")
    assert result.status == FAIL and "list of indices" in result.message

    def crashes_without_evals(train, evals, n):
        grams = set.union(*[{tuple(data.words(e)[i:i + n]) for i in range(len(data.words(e)) - n + 1)} for e in evals])
        return [i for i, t in enumerate(train)
                if grams & {tuple(data.words(t)[j:j + n]) for j in range(len(data.words(t)) - n + 1)}]

    result = checks.check_ngram_contamination(crashes_without_evals)
    assert result.status == FAIL and "with no evaluation texts raised TypeError" in result.message


# ------------------------------------------------- 08.4 the LSH candidate probability
@pytest.mark.parametrize("kind, hint", [
    ("swapped", "bands and rows are swapped"),
    ("one_band", "one band agrees"),
    ("all_bands", "every band agrees"),
    ("union_bound", "union bound"),
    ("all_slots", "any single slot"),
])
def test_candidate_probability_mistakes(kind, hint):
    result = checks.check_candidate_probability(lambda s, b, r: _candidate_probability(s, b, r, kind=kind))
    assert result.status == FAIL and hint in result.message, result.message


def test_candidate_probability_forms_and_a_general_hint():
    assert checks.check_candidate_probability(lambda s, b, r: np.float32(1 - (1 - s**r) ** b)).status == PASS
    result = checks.check_candidate_probability(lambda s, b, r: 1 - (1 - s**r) ** (b - 1))
    assert result.status == FAIL and "none of b independent bands" in result.message
