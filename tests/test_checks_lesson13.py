"""Lesson 13 checkers: the references equal the library and hand-computed values, known-wrong answers fail with
their hint, stubs are not attempted, the library's own functions are refused, in-place changes are refused."""

import pytest
import torch
from learner import assert_checker_basics, assert_in_place_change_fails

from mlakit import distributed
from mlakit.config import ModelConfig
from mlakit.course import checks
from mlakit.course.checks import FAIL, PASS
from mlakit.course.checks.lesson13 import _bubble, _bytes, _split_cases, _splits


# ------------------------------------------------- references against hand values and the library
def test_bytes_per_token_by_hand_and_against_the_library():
    # 4 nodes x (7168 fp8 bytes + 56 scales x 4 bytes) + 4 nodes x 7168 x 2 bf16 bytes
    assert checks.reference_bytes_per_token(7168, 8, 4) == 4 * 7392 + 4 * 14336 == 86912
    assert checks.reference_bytes_per_token(200, 3, 2) == 2 * (200 + 8) + 2 * 400
    v3 = ModelConfig.from_preset("deepseek-v3")
    assert distributed.v3_bytes_per_token(v3).total_bytes == checks.reference_bytes_per_token(7168, 8, 4)


def test_split_sizes_by_hand():
    # 2 ranks, 4 experts: rank 0 holds experts 0, 1; rank 1 holds 2, 3
    inp, out = checks.reference_split_sizes(torch.tensor([[3, 0, 1, 2], [0, 5, 4, 1]]))
    assert inp.tolist() == [[3, 3], [5, 5]]
    assert out.tolist() == [[3, 5], [3, 5]]


def test_split_sizes_match_what_the_expert_parallel_layer_exchanges():
    """ExpertParallelMoE sums its (E,) counts over each rank's experts (input splits) and receives
    (W, E/W) counts (output splits): the same arithmetic on the counts of all ranks at once."""
    counts = torch.randint(0, 5, (4, 8), generator=torch.Generator().manual_seed(0))
    inp, out = checks.reference_split_sizes(counts)
    for r in range(4):
        assert inp[r].tolist() == counts[r].view(4, 2).sum(1).tolist()
        recv = torch.stack([counts[s].view(4, 2)[r] for s in range(4)])  # what rank r's count all-to-all receives
        assert out[r].tolist() == recv.sum(1).tolist()


def test_pipeline_bubble_equals_the_library():
    for schedule in ("1F1B", "ZB1P", "DualPipe"):
        assert checks.reference_pipeline_bubble(schedule, 16, 1.0, 2.0, 1.0, 2.5) == distributed.bubble(
            schedule, 16, 1.0, 2.0, 1.0, FB=2.5)
    assert checks.reference_pipeline_bubble("DualPipe", 16, 1.0, 2.0, 1.0, 2.5) == 7 * 1.5


CHECKS = [
    (checks.check_bytes_per_token, checks.reference_bytes_per_token, None),
    (checks.check_split_sizes, checks.reference_split_sizes, None),
    (checks.check_pipeline_bubble, checks.reference_pipeline_bubble, distributed.bubble),
]


@pytest.mark.parametrize("check, reference, library", CHECKS)
def test_reference_passes_and_stub_is_not_attempted(check, reference, library, capsys):
    assert_checker_basics(check, reference, "13", lambda: capsys.readouterr().out,
                          refused=(reference,) if library is None else (reference, library))


# ------------------------------------------------- 13.1
@pytest.mark.parametrize("switches, hint", [
    (dict(per="expert"), "once per target node"),
    (dict(scale_bytes=0), "scales are missing"),
    (dict(scale_bytes=1), "4 bytes each"),
    (dict(combine=1), "BF16, 2 bytes"),
    (dict(dispatch=2, scale_bytes=0), "dispatches in FP8"),
    (dict(ceil=False), "partial tile"),
    (dict(combine=0), "combine is missing"),
])
def test_bytes_mistakes(switches, hint):
    result = checks.check_bytes_per_token(lambda H, k, n: _bytes(H, k, n, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_bytes_as_a_float_or_a_tensor_pass():
    assert checks.check_bytes_per_token(lambda H, k, n: float(checks.reference_bytes_per_token(H, k, n))).status == PASS
    assert checks.check_bytes_per_token(
        lambda H, k, n: torch.tensor(checks.reference_bytes_per_token(H, k, n))).status == PASS


# ------------------------------------------------- 13.2
@pytest.mark.parametrize("switches, hint", [
    (dict(transpose=False), "a transpose"),
    (dict(layout="strided"), "round-robin (expert e on rank e % W)"),
    (dict(layout="strided", transpose=False), "round-robin and no transpose"),
])
def test_split_mistakes(switches, hint):
    result = checks.check_split_sizes(lambda c: _splits(c, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_split_cases_show_every_mistake():
    for counts in _split_cases()[1:3]:
        variants = [_splits(counts, **s) for s in (dict(), dict(transpose=False), dict(layout="strided"))]
        assert not torch.equal(variants[0][1], variants[1][1]) and not torch.equal(variants[0][0], variants[2][0])


def test_split_sizes_wrong_shape_and_in_place():
    result = checks.check_split_sizes(lambda c: (c.sum(1), c.sum(1)))
    assert result.status == FAIL and "input_splits has shape" in result.message
    assert_in_place_change_fails(checks, "check_split_sizes", "reference_split_sizes", 0, "send_counts")


# ------------------------------------------------- 13.3
@pytest.mark.parametrize("switches, hint", [
    (dict(stages="pp"), "PP/2 - 1"),
    (dict(w_factor="one"), "removes 2W per ramp step, DualPipe 3W"),
])
def test_bubble_mistakes(switches, hint):
    result = checks.check_pipeline_bubble(lambda *a: _bubble(*a, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_bubble_without_a_schedule_branch_fails_with_the_formulas():
    result = checks.check_pipeline_bubble(lambda s, pp, F, B, W, FB: (pp - 1) * (F + B))
    assert result.status == FAIL and "(PP/2 - 1)(F&B + B - 3W)" in result.message
