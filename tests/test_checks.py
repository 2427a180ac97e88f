"""Every checker passes the reference answer and fails known-wrong answers with the right hint; the package re-exports them all."""

import importlib
import operator
import pkgutil
import re

import pytest
import torch
from learner import as_learner

from mlakit.course import checks
from mlakit.course.checks import FAIL, NOT_ATTEMPTED, PASS
from mlakit.course.checks._core import _Fail, diagnose


def _not_done(*args, **kwargs):
    raise NotImplementedError


# ---------------------------------------------------------------- 01.1
def _no_mask(q, k):
    return q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5


def _no_scale(q, k):
    s = q @ k.transpose(-2, -1)
    return s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))


def _divide_by_d(q, k):
    return checks.reference_causal_scores(q, k) * q.shape[-1] ** 0.5 / q.shape[-1]


def _transposed(q, k):
    return checks.reference_causal_scores(k, q)


def _zero_mask(q, k):
    return torch.nan_to_num(checks.reference_causal_scores(q, k), neginf=0.0)


def _big_negative(q, k):
    return torch.nan_to_num(checks.reference_causal_scores(q, k), neginf=-1e9)


def _wrong_shape(q, k):
    return checks.reference_causal_scores(q, k)[..., :-1]


def _masked_with(q, k, diagonal):
    s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(diagonal), float("-inf"))


def _float64(q, k):
    s = (q.double() @ k.double().mT) / q.shape[-1] ** .5
    return s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_causal_scores), PASS, "matches"),
    (_float64, PASS, "matches"),
    (lambda q, k: _masked_with(q, k, 0), FAIL, "the diagonal is masked too"),
    (lambda q, k: _masked_with(q, k, 2), FAIL, "key j = i + 1 is visible"),
    (lambda q, k: torch.softmax(_masked_with(q, k, 1), dim=-1), FAIL, "softmax weights"),
    (_big_negative, PASS, "matches"),
    (_no_mask, FAIL, "not masked"),
    (_no_scale, FAIL, "not scaled"),
    (_divide_by_d, FAIL, "1/sqrt(d), not 1/d"),
    (_transposed, FAIL, "swapped"),
    (_zero_mask, FAIL, "masked positions are 0"),
    (_wrong_shape, FAIL, "dimension 3 differs"),
    (_not_done, NOT_ATTEMPTED, "NotImplementedError"),
    (lambda q, k: 1 / 0, FAIL, "ZeroDivisionError"),
    (lambda q, k: q.numpy(), FAIL, "torch.Tensor"),
])
def test_check_causal_scores(fn, status, phrase, capsys):
    result = checks.check_causal_scores(fn)
    assert result.status == status
    assert phrase in result.message
    assert capsys.readouterr().out.strip() == result.line()


# ---------------------------------------------------------------- 01.2
def _overwrite_from_zero(ck, cv, length, k, v):
    t = k.shape[-2]
    ck[..., :t, :] = k
    cv[..., :t, :] = v
    return ck[..., :length + t, :], cv[..., :length + t, :], length + t


def _whole_buffer(ck, cv, length, k, v):
    _, _, end = checks.reference_append_kv(ck, cv, length, k, v)
    return ck, cv, end


def _length_not_updated(ck, cv, length, k, v):
    keys, values, _ = checks.reference_append_kv(ck, cv, length, k, v)
    return keys, values, length


def _values_are_keys(ck, cv, length, k, v):
    keys, _, end = checks.reference_append_kv(ck, cv, length, k, v)
    return keys, keys, end


def _no_overflow_check(ck, cv, length, k, v):
    end = length + k.shape[-2]
    ck[..., length:end, :] = k
    cv[..., length:end, :] = v
    return ck[..., :end, :], cv[..., :end, :], end


def _refuses_the_last_slot(ck, cv, length, k, v):  # `>=` where `>` is meant: a full cache is refused too early
    if length + k.shape[-2] >= ck.shape[-2]:
        raise ValueError("cache full")
    return _no_overflow_check(ck, cv, length, k, v)


@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_append_kv), PASS, "appends"),
    (_refuses_the_last_slot, FAIL, "(>, not >=)"),
    (_overwrite_from_zero, FAIL, "position 0"),
    (_whole_buffer, FAIL, "whole buffer"),
    (_length_not_updated, FAIL, "new_length"),
    (_values_are_keys, FAIL, "values are the keys"),
    (_no_overflow_check, FAIL, "did not raise"),
    (lambda *a: None, FAIL, "tuple"),
    (_not_done, NOT_ATTEMPTED, "append_kv"),
])
def test_check_append_kv(fn, status, phrase):
    result = checks.check_append_kv(fn)
    assert result.status == status, result.message
    assert phrase in result.message


# ---------------------------------------------------------------- 01.3
@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_gqa_cache_bytes), PASS, "Llama-3-70B"),
    (lambda L, g, d, t, b, e: L * g * d * t * b * e, FAIL, "keys AND values"),
    (lambda L, g, d, t, b, e: 2 * L * g * d * t * b, FAIL, "not bytes"),
    (lambda L, g, d, t, b, e: 16 * L * g * d * t * b * e, FAIL, "that is bits"),
    (lambda L, g, d, t, b, e: 2 * g * d * t * b * e, FAIL, "every layer"),
    (lambda L, g, d, t, b, e: 2 * L * g * d * t * e, FAIL, "batch_size"),
    (lambda L, g, d, t, b, e: 2 * L * 64 * d * t * b * e, FAIL, "Hint"),
    (_not_done, NOT_ATTEMPTED, "gqa_cache_bytes"),
])
def test_check_gqa_cache_bytes(fn, status, phrase):
    result = checks.check_gqa_cache_bytes(fn)
    assert result.status == status, result.message
    assert phrase in result.message


# ---------------------------------------------------------------- 01.4
@pytest.mark.parametrize("fn, status, phrase", [
    (as_learner(checks.reference_repeat_kv), PASS, "right order"),
    (lambda x, n: x.repeat(1, n, 1, 1), FAIL, "0,0,1,1"),
    (lambda x, n: x, FAIL, "shape"),
    (lambda x, n: x.repeat_interleave(n, dim=1) * 2, FAIL, "repeat_interleave"),
    (_not_done, NOT_ATTEMPTED, "repeat_kv"),
])
def test_check_repeat_kv(fn, status, phrase):
    result = checks.check_repeat_kv(fn)
    assert result.status == status, result.message
    assert phrase in result.message


def test_result_lines_parse_and_fallback_says_so(capsys):
    good = checks.check_repeat_kv(as_learner(checks.reference_repeat_kv))
    bad = checks.check_repeat_kv(_not_done)
    for r in (good, bad):
        m = checks.RESULT_LINE.match(r.line())
        assert m and m["exercise"] == "01.4" and m["status"] == r.status
    capsys.readouterr()
    x = torch.randn(1, 2, 3, 4)
    mine = checks.use_or_fallback(good, checks.reference_repeat_kv)
    assert mine is not checks.reference_repeat_kv and torch.equal(mine(x, 2), checks.reference_repeat_kv(x, 2))
    assert capsys.readouterr().out == ""
    assert checks.use_or_fallback(bad, checks.reference_repeat_kv) is checks.reference_repeat_kv
    assert "using the library's version of `repeat_kv` until exercise 01.4 passes" in capsys.readouterr().out


def test_use_or_fallback_fits_a_float64_answer_to_the_notebook():
    def repeat_kv(x, n_rep):  # right, in float64: passes, and the notebook's float32 cells get float32 back
        return x.double().repeat_interleave(n_rep, dim=1)

    result = checks.check_repeat_kv(repeat_kv)
    assert result.passed, result.message
    x = torch.randn(1, 2, 3, 4)
    out = checks.use_or_fallback(result, checks.reference_repeat_kv)(x, 2)
    assert out.dtype == torch.float32 and torch.equal(out, checks.reference_repeat_kv(x, 2))


# ---------------------------------------------------------------- the package
def _lesson_modules():
    names = sorted(m.name for m in pkgutil.iter_modules(checks.__path__) if m.name.startswith("lesson"))
    return [importlib.import_module(f"{checks.__name__}.{name}") for name in names]


def test_every_checker_and_reference_is_reexported_explicitly():
    modules = _lesson_modules()
    assert [m.__name__.rsplit(".", 1)[1] for m in modules] == [f"lesson{n:02d}" for n in range(1, len(modules) + 1)]
    core = {"CheckResult", "Answer", "checker", "use_or_fallback", "PASS", "FAIL", "NOT_ATTEMPTED", "RESULT_LINE"}
    listed = set(core)
    for module in modules:
        defined = {name for name, obj in vars(module).items() if name.startswith(("check_", "reference_"))
                   and getattr(obj, "__module__", None) == module.__name__}
        assert set(module.__all__) == defined, f"{module.__name__}.__all__ misses or adds names"
        for name in module.__all__:
            assert name in checks.__all__, f"{name} of {module.__name__} is not imported in checks/__init__.py"
            assert getattr(checks, name) is getattr(module, name)
        listed |= set(module.__all__)
    assert len(checks.__all__) == len(set(checks.__all__)) and set(checks.__all__) == listed
    for name in checks.__all__:
        assert hasattr(checks, name), name


def test_every_checker_names_its_exercise_in_its_lesson():
    for module in _lesson_modules():
        lesson = module.__name__[-2:]
        numbers = []
        for name in module.__all__:
            if name.startswith("check_"):
                m = re.match(rf"Exercise {lesson}\.(\d+):", getattr(module, name).__doc__ or "")
                assert m, f"{name}'s docstring must start with 'Exercise {lesson}.k:' (the grader reads it)"
                assert f"reference_{name.removeprefix('check_')}" in module.__all__, name
                numbers.append(int(m.group(1)))
        assert sorted(numbers) == list(range(1, len(numbers) + 1)), module.__name__


def test_diagnose_names_the_first_matching_mistake_and_skips_none():
    mistakes = [(None, "skipped"), (3, "three"), (4, "four"), (3, "a later three")]
    with pytest.raises(_Fail, match=r"^for x: three$"):
        diagnose(3, mistakes, same=operator.eq, prefix="for x: ")
    assert diagnose(5, mistakes, same=operator.eq) is None
    t = torch.tensor([1.0, float("-inf")])
    with pytest.raises(_Fail, match="^close$"):  # tensors by default: within tolerance, -inf where it is expected
        diagnose(t + 1e-7, [(t * 2, "doubled"), (t, "close")])


@pytest.mark.parametrize("answer", [
    checks.reference_repeat_kv,  # a reference checker function
    __import__("functools").partial(checks.reference_repeat_kv),
])
def test_the_librarys_own_function_is_refused_with_its_name(answer):
    result = checks.check_repeat_kv(answer)
    assert result.status == FAIL
    assert "library's own `mlakit.course.checks.lesson01.reference_repeat_kv`" in result.message


def test_every_checker_refuses_the_librarys_reference(capsys):
    for module in _lesson_modules():
        for name in module.__all__:
            if name.startswith("check_"):
                reference = getattr(module, "reference_" + getattr(module, name).answer_name, None)
                if reference is not None:
                    result = getattr(module, name)(reference)
                    assert result.status == FAIL and "library's own" in result.message, name


def test_library_classes_and_functions_are_refused(capsys):
    from mlakit.layers import RotaryEmbedding
    from mlakit.moe import max_violation

    assert "library's own `mlakit.moe" in checks.check_max_violation(max_violation).message
    rope = RotaryEmbedding(8)
    assert "library's own `mlakit.layers.RotaryEmbedding`" in checks.check_rope_pairs(rope).message
