"""Lesson 12 checkers: the references equal the library and hand-computed values, known-wrong answers fail with
their hint, stubs are not attempted, the library's own functions are refused, float64 answers pass."""

import math

import pytest
import torch
from learner import assert_checker_basics, assert_in_place_change_fails

from mlakit import kernels
from mlakit.course import checks
from mlakit.course.checks import FAIL, PASS
from mlakit.course.checks.lesson12 import _decode_cost, _merge, _online_step


# ------------------------------------------------- references against hand values and the library
def test_decode_cost_of_v3_by_hand():
    # one V3 layer, one sequence of 4096 tokens in bf16: 4096 rows of 576 numbers = 4,718,592 bytes;
    # 128 heads x 4096 rows x (576 + 512) multiply-adds x 2 = 1,140,850,688 FLOPs: 241.8 FLOPs per byte
    flops, nbytes = checks.reference_mla_decode_cost(128, 512, 64, 4096, 1, 2)
    assert (flops, nbytes) == (1_140_850_688, 4_718_592)
    assert math.isclose(flops / nbytes, 128 * 1088 / 576)
    # batch and context scale both numbers alike: the intensity is set by the heads alone
    f8, b8 = checks.reference_mla_decode_cost(128, 512, 64, 1000, 8, 2)
    assert math.isclose(f8 / b8, flops / nbytes)


def test_online_step_reference_reproduces_softmax_and_the_library_kernel_math():
    g = torch.Generator().manual_seed(0)
    scores, values = torch.randn(3, 10, generator=g) * 5, torch.randn(10, 4, generator=g)
    m, l, acc = torch.full((3,), float("-inf")), torch.zeros(3), torch.zeros(3, 4)
    for start in range(0, 10, 4):  # blocks of 4, 4, 2
        m, l, acc = checks.reference_online_softmax_step(m, l, acc, scores[:, start:start + 4], values[start:start + 4])
    torch.testing.assert_close(acc / l[:, None], torch.softmax(scores.double(), -1) @ values.double())
    torch.testing.assert_close(m, scores.double().amax(-1))  # the running max ends at the max


def test_online_step_by_hand():
    # one query; first block score 0 (value 1), then score log 3 (value 5): m 0 -> log 3, l 1 -> 1/3 + 1
    m, l, acc = checks.reference_online_softmax_step(torch.tensor([float("-inf")]), torch.zeros(1), torch.zeros(1, 1),
                                                     torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    assert (m.item(), l.item(), acc.item()) == (0.0, 1.0, 1.0)
    m, l, acc = checks.reference_online_softmax_step(m, l, acc, torch.tensor([[math.log(3.0)]]), torch.tensor([[5.0]]))
    assert math.isclose(m.item(), math.log(3.0), rel_tol=1e-6) and math.isclose(l.item(), 4 / 3, rel_tol=1e-6)
    assert math.isclose((acc / l).item(), 0.25 * 1 + 0.75 * 5, rel_tol=1e-6)  # softmax(0, log 3) = (1/4, 3/4)


def test_merge_reference_equals_the_librarys_split_decode():
    # the torch reference of mla_decode with num_splits runs this merge: rebuild its splits by hand and merge them
    g = torch.Generator().manual_seed(1)
    q, latent = torch.randn(2, 3, 12, generator=g), torch.randn(2, 30, 12, generator=g) * 2
    lengths = torch.tensor([30, 7])
    outs, lses = [], []
    for start in range(0, 30, 10):
        s = (q.double() @ latent[:, start:start + 10].double().transpose(1, 2)) * 0.4  # (B, n_h, 10)
        valid = (torch.arange(start, start + 10)[None, :] < lengths[:, None])[:, None]  # (B, 1, 10)
        s = s.masked_fill(~valid, float("-inf"))
        lse = torch.logsumexp(s, -1)  # (B, n_h), -inf for an empty split
        p = torch.where(valid, torch.exp(s - torch.where(torch.isfinite(lse), lse, 0)[..., None]), 0)
        outs.append(p @ latent[:, start:start + 10, :8].double())
        lses.append(lse)
    merged = torch.stack([checks.reference_merge_splits(torch.stack(outs)[:, b], torch.stack(lses)[:, b])
                          for b in range(2)])
    library = kernels.mla_decode(q, latent, lengths, 0.4, 8, backend="torch", num_splits=3)
    torch.testing.assert_close(merged.float(), library, atol=1e-5, rtol=1e-5)


def test_merge_by_hand_and_its_boundaries():
    # two splits with lse log 1 and log 3: weights 1/4 and 3/4
    outs = torch.tensor([[[4.0]], [[8.0]]])
    lses = torch.tensor([[0.0], [math.log(3.0)]])
    assert math.isclose(checks.reference_merge_splits(outs, lses).item(), 7.0, rel_tol=1e-6)
    lses_big = lses + 1000.0  # the same weights far out: no overflow
    assert math.isclose(checks.reference_merge_splits(outs, lses_big).item(), 7.0, rel_tol=1e-4)
    empty = torch.full((2, 1), float("-inf"))
    assert checks.reference_merge_splits(torch.zeros(2, 1, 1), empty).item() == 0.0


# ------------------------------------------------- the references pass, stubs, errors, the library refused
CHECKS = [
    (checks.check_mla_decode_cost, checks.reference_mla_decode_cost),
    (checks.check_online_softmax_step, checks.reference_online_softmax_step),
    (checks.check_merge_splits, checks.reference_merge_splits),
]


@pytest.mark.parametrize("check, reference", CHECKS)
def test_reference_passes_and_stub_is_not_attempted(check, reference, capsys):
    assert_checker_basics(check, reference, "12", lambda: capsys.readouterr().out, refused=(reference,))


# ------------------------------------------------- 12.1 the cost of a decode step
@pytest.mark.parametrize("switches, hint", [
    (dict(per_head=True), "once per query head"),
    (dict(flop_per_mac=1), "multiply-adds"),
    (dict(value=False), "scores only"),
    (dict(rope_bytes=False), "leave out the rope key"),
    (dict(in_bytes=False), "counts elements"),
])
def test_cost_mistakes(switches, hint):
    result = checks.check_mla_decode_cost(lambda *a: _decode_cost(*a, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_cost_swapped_and_float_answers():
    swapped = checks.check_mla_decode_cost(lambda *a: _decode_cost(*a)[::-1])
    assert swapped.status == FAIL and "swapped" in swapped.message
    as_floats = checks.check_mla_decode_cost(lambda *a: tuple(float(v) for v in _decode_cost(*a)))
    assert as_floats.status == PASS
    as_tensors = checks.check_mla_decode_cost(lambda *a: [torch.tensor(float(v)) for v in _decode_cost(*a)])
    assert as_tensors.status == PASS


# ------------------------------------------------- 12.2 the online softmax
@pytest.mark.parametrize("switches, hint", [
    (dict(rescale_acc=False), "accumulator is not rescaled"),
    (dict(rescale_l=False), "running sum l is not rescaled"),
    (dict(rescale_acc=False, rescale_l=False), "neither l nor acc"),
    (dict(keep_old_max=False), "the block's alone"),
    (dict(subtract_max=False), "without subtracting the running maximum"),
])
def test_online_mistakes(switches, hint):
    result = checks.check_online_softmax_step(lambda *a: _online_step(*a, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_online_in_float32_passes_and_in_place_is_refused():
    def float32(m, l, acc, scores, values):
        m_new = torch.maximum(m, scores.amax(-1))
        alpha = torch.exp(m - m_new)
        p = torch.exp(scores - m_new[:, None])
        return m_new, l * alpha + p.sum(-1), acc * alpha[:, None] + p @ values

    assert checks.check_online_softmax_step(float32).status == PASS
    assert_in_place_change_fails(checks, "check_online_softmax_step", "reference_online_softmax_step", 2, "acc")


# ------------------------------------------------- 12.3 the merge of splits
@pytest.mark.parametrize("switches, hint", [
    (dict(how="mean"), "equal weights"),
    (dict(how="best"), "largest log-sum-exp is kept"),
    (dict(how="unnormalised"), "not normalised"),
    (dict(how="naive"), "overflows"),
])
def test_merge_mistakes(switches, hint):
    result = checks.check_merge_splits(lambda o, s: _merge(o, s, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_merge_of_all_empty_splits_must_give_zeros():
    def no_guard(outs, lses):  # subtracts the max, but 0 / 0 where every split is empty
        w = torch.exp(lses - lses.amax(0))
        return (w[..., None] * outs).sum(0) / w.sum(0)[:, None]

    result = checks.check_merge_splits(no_guard)
    assert result.status == FAIL and "must get zeros" in result.message, result.message


def test_merge_with_logsumexp_passes_and_in_place_is_refused():
    def with_logsumexp(outs, lses):
        total = torch.logsumexp(lses, 0)
        w = torch.exp(lses - torch.where(torch.isfinite(total), total, torch.zeros_like(total)))
        return (w[..., None] * outs).sum(0)

    assert checks.check_merge_splits(with_logsumexp).status == PASS
    assert_in_place_change_fails(checks, "check_merge_splits", "reference_merge_splits", 0, "outs")
