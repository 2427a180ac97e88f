"""Exercise self-checks: run the learner's answer on prepared inputs, compare with the library, explain.

Every checker takes the learner's function, runs it on a few prepared inputs,
compares with the library's reference, prints one line and returns a
:class:`CheckResult`::

    [ex 01.1 causal_scores] PASS: matches the reference on 3 inputs
    [ex 01.1 causal_scores] FAIL: position (0, 1) is not masked. Hint: a query may not see later keys ...
    [ex 01.1 causal_scores] NOT ATTEMPTED: replace the `raise NotImplementedError` ...

The first bracket is what ``mlakit grade`` reads. A checker never raises: an
exception inside the learner's code becomes a FAIL with the exception named, so
the notebook keeps running. Lessons that build on an exercise use
:func:`use_or_fallback` to continue with the library's version until the
learner's one passes.

Hints are diagnoses, not the answer: each checker computes what the mistakes
learners make most would give (a missing mask, the wrong scale, a transpose, K
without V) and :func:`diagnose` names the first one the learner's answer
equals. Checkers live in one module per lesson (``lesson01.py``, ...) and are
all importable from :mod:`mlakit.course.checks`; a checker's docstring starts
with ``Exercise NN.k:``, which the grader reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

PASS, FAIL, NOT_ATTEMPTED = "PASS", "FAIL", "NOT ATTEMPTED"
RESULT_LINE = re.compile(r"^\[ex (?P<exercise>[\w.]+) (?P<name>\w+)\] (?P<status>PASS|FAIL|NOT ATTEMPTED): ?(?P<message>.*)$")


@dataclass
class CheckResult:
    exercise: str  # "01.1": lesson and number
    name: str  # the function the learner writes
    status: str  # PASS, FAIL or NOT ATTEMPTED
    message: str

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def line(self) -> str:
        return f"[ex {self.exercise} {self.name}] {self.status}: {self.message}"

    def __repr__(self) -> str:
        return self.line()


class _Fail(Exception):
    """Raised inside a checker to stop at the first problem found."""


def _run(exercise: str, name: str, body: Callable[[], str]) -> CheckResult:
    try:
        result = CheckResult(exercise, name, PASS, body())
    except NotImplementedError:
        result = CheckResult(exercise, name, NOT_ATTEMPTED,
                             f"replace the `raise NotImplementedError` in `{name}` with your code, then run this cell again")
    except _Fail as e:
        result = CheckResult(exercise, name, FAIL, str(e))
    except Exception as e:  # noqa: BLE001 - the learner's code may raise anything; report it, never crash
        result = CheckResult(exercise, name, FAIL, f"your code raised {type(e).__name__}: {e}")
    print(result.line())
    return result


def _expect_tensor(value, expected_shape: tuple, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise _Fail(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(expected_shape):
        got, want = tuple(value.shape), tuple(expected_shape)
        dims = [i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b]
        where = f" (dimension {dims[0]} differs)" if len(got) == len(want) and dims else ""
        raise _Fail(f"{what} has shape {got}; expected {want}{where}")
    return value


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    finite = torch.isfinite(b)
    if not torch.equal(torch.isfinite(a), finite):
        return False
    return bool(torch.allclose(a[finite], b[finite], atol=atol, rtol=rtol))


def diagnose(answer: Any, mistakes: Iterable[tuple[Any, str]], same: Callable[[Any, Any], bool] = _close,
             prefix: str = "") -> None:
    """Fail with the hint of the first known mistake the answer equals; return when it equals none.

    The diagnosis ladder of every checker. ``mistakes`` holds (variant, hint)
    pairs, most telling first: a variant is what one typical mistake computes
    (a tensor, a number, a list of them, or the keyword switches of a
    ``_variant(..., **switches)`` function), and ``same(answer, variant)`` says
    whether the learner's answer equals it (by default :func:`_close`, for
    tensors). A variant of ``None`` is skipped: write ``value if condition else
    None`` for a mistake that these inputs cannot show (a transposed weight that
    only runs when it is square). The failure reads ``prefix + hint``; when no
    variant matches, the checker goes on to its general hint.
    """
    for variant, hint in mistakes:
        if variant is not None and same(answer, variant):
            raise _Fail(prefix + hint)


def use_or_fallback(result: CheckResult, learner: Callable, reference: Callable) -> Callable:
    """The learner's function when its check passed, else the library's (and say so)."""
    if result.passed:
        return learner
    print(f"(using the library's version of `{result.name}` until exercise {result.exercise} passes)")
    return reference
