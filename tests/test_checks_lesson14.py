"""Lesson 14 checkers: the references equal the library and hand-computed values, known-wrong answers fail with
their hint, stubs are not attempted, the library's own functions are refused, in-place changes are refused."""

import pytest
import torch
from learner import assert_checker_basics, assert_in_place_change_fails

from mlakit import cost, fp8
from mlakit.course import checks
from mlakit.course.checks import FAIL, PASS
from mlakit.course.checks.lesson14 import (
    _hours,
    _narrow,
    _promote_cases,
    _promoted,
    _tile_cases,
    _tiles,
)


# ------------------------------------------------- references against hand values and the library
def test_gpu_hours_reference_by_hand_and_against_the_library():
    # 6 x 1e6 x 1.2e9 = 7.2e15 FLOPs at 1e12 x 0.5 FLOP/s = 14,400 s = 4 hours
    assert checks.reference_training_gpu_hours(1e6, 1.2e9, 1e12, 0.5) == pytest.approx(4.0)
    assert checks.reference_training_gpu_hours(37e9, 14.8e12, 989e12, 0.4) == \
        pytest.approx(cost.gpu_hours(6 * 37e9 * 14.8e12, 989e12, 0.4))


def test_tile_reference_equals_the_library():
    for x in _tile_cases():
        q, s = checks.reference_quantize_1x128(x)
        lib = fp8.quantize(x, (1, 128))
        assert torch.equal(q, lib.data.float()) and torch.equal(s, lib.scale)


def test_promoted_sum_reference_by_hand_and_against_the_library():
    ones = torch.ones(2, 32)
    assert checks.reference_promoted_sum(ones, _narrow(4), 16).tolist() == [32.0, 32.0]
    assert _promoted(ones, _narrow(4), 16, mode="never").tolist() == [16.0, 16.0]
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 300, generator=g)
    for bits, interval in ((14, 128), (6, 32)):
        torch.testing.assert_close(checks.reference_promoted_sum(p, _narrow(bits), interval),
                                   fp8.accumulate(p, bits, interval, "truncate"), rtol=0, atol=0)


# ------------------------------------------------- the references pass, stubs, errors, the library refused
CHECKS = [
    (checks.check_training_gpu_hours, checks.reference_training_gpu_hours, cost.gpu_hours),
    (checks.check_quantize_1x128, checks.reference_quantize_1x128, fp8.quantize),
    (checks.check_promoted_sum, checks.reference_promoted_sum, fp8.accumulate),
]


@pytest.mark.parametrize("check, reference, library", CHECKS)
def test_reference_passes_and_stub_is_not_attempted(check, reference, library, capsys):
    assert_checker_basics(check, reference, "14", lambda: capsys.readouterr().out, refused=(reference, library))


def test_in_place_changes_are_refused():
    assert_in_place_change_fails(checks, "check_quantize_1x128", "reference_quantize_1x128", 0, "x")
    assert_in_place_change_fails(checks, "check_promoted_sum", "reference_promoted_sum", 0, "products")


# ------------------------------------------------- 14.1
@pytest.mark.parametrize("switches, hint", [
    (dict(per_token=2.0), "forward pass only"),
    (dict(per_token=3.0), "3 N D"),
    (dict(seconds=1.0), "GPU seconds"),
    (dict(seconds=86400.0), "GPU days"),
    (dict(mfu_use="multiply"), "multiplies the time"),
    (dict(mfu_use="ignore"), "MFU is left out"),
])
def test_gpu_hours_mistakes(switches, hint):
    result = checks.check_training_gpu_hours(lambda n, d, p, m: _hours(n, d, p, m, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_gpu_hours_as_a_tensor_or_numpy_number_pass():
    import numpy as np

    assert checks.check_training_gpu_hours(lambda n, d, p, m: torch.tensor(6 * n * d / (p * m) / 3600,
                                                                            dtype=torch.float64)).status == PASS
    assert checks.check_training_gpu_hours(lambda n, d, p, m: np.float64(6 * n * d / (p * m) / 3600)).status == PASS


# ------------------------------------------------- 14.2
@pytest.mark.parametrize("switches, hint", [
    (dict(inverted=True), "upside down"),
    (dict(dtype=torch.float8_e5m2), "E5M2"),
    (dict(dtype=torch.bfloat16), "bfloat16"),
])
def test_tile_mistakes(switches, hint):
    result = checks.check_quantize_1x128(lambda x: _tiles(x, **switches))
    assert result.status == FAIL and hint in result.message, result.message


@pytest.mark.parametrize("rows, cols, hint", [(1, 512, "one scale per row"), (128, 128, "scales have shape"),
                                              (10**6, 10**6, "per-tensor")])
def test_tiles_of_the_wrong_shape_are_named(rows, cols, hint):
    result = checks.check_quantize_1x128(lambda x: _tiles(x, rows=rows, cols=cols))
    assert result.status == FAIL and hint in result.message, result.message


def test_a_zero_tile_giving_nan_is_diagnosed():
    result = checks.check_quantize_1x128(lambda x: _tiles(x, zero="nan"))
    assert result.status == FAIL and "NaN" in result.message and "scale 1" in result.message


def test_unrounded_values_and_fp8_dtype_answers():
    def unrounded(x):
        q, s = _tiles(x)
        return x.view(x.shape[0], -1, 128).div(s[..., None]).reshape(x.shape), s

    result = checks.check_quantize_1x128(unrounded)
    assert result.status == FAIL and ("not rounded" in result.message or "beyond" in result.message), result.message

    def as_fp8(x):
        M, K = x.shape
        amax = x.view(M, K // 128, 128).abs().amax(-1)
        s = torch.where(amax > 0, amax / 448, torch.ones_like(amax))
        return (x.view(M, K // 128, 128) / s[..., None]).to(torch.float8_e4m3fn).view(M, K), s

    assert checks.check_quantize_1x128(as_fp8).status == PASS


# ------------------------------------------------- 14.3
@pytest.mark.parametrize("mode, hint", [
    ("exact", "exact sum"),
    ("never", "never promoted"),
    ("no_reset", "not restarted"),
    ("round_once", "rounded once"),
    ("off_by_one", "(k + 1) % interval"),
])
def test_promotion_mistakes(mode, hint):
    result = checks.check_promoted_sum(lambda p, narrow, n: _promoted(p, narrow, n, mode=mode))
    assert result.status == FAIL and hint in result.message, result.message


def test_every_promotion_mistake_differs_on_the_cases():
    for products, narrow, interval in _promote_cases()[:1] + _promote_cases()[1:]:
        right = _promoted(products, narrow, interval)
        differs = [mode for mode in ("exact", "never", "no_reset", "round_once", "off_by_one")
                   if not torch.allclose(_promoted(products, narrow, interval, mode=mode), right, rtol=1e-9, atol=1e-9)]
        assert differs, interval
    seen = {mode for products, narrow, interval in _promote_cases()
            for mode in ("exact", "never", "no_reset", "round_once", "off_by_one")
            if not torch.allclose(_promoted(products, narrow, interval, mode=mode),
                                  _promoted(products, narrow, interval), rtol=1e-9, atol=1e-9)}
    assert seen == {"exact", "never", "no_reset", "round_once", "off_by_one"}


def test_promoted_sum_in_float32_passes_when_exact_enough():
    def in_float32(products, narrow, interval):
        out = checks.reference_promoted_sum(products, narrow, interval)
        return out.float()

    assert checks.check_promoted_sum(in_float32).status == PASS
