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

import functools
import inspect
import math
import re
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

PASS, FAIL, NOT_ATTEMPTED = "PASS", "FAIL", "NOT ATTEMPTED"
RESULT_LINE = re.compile(r"^\[ex (?P<exercise>[\w.]+) (?P<name>\w+)\] (?P<status>PASS|FAIL|NOT ATTEMPTED): ?(?P<message>.*)$")


@dataclass
class CheckResult:
    exercise: str  # "01.1": lesson and number
    name: str  # the function the learner writes
    status: str  # PASS, FAIL or NOT ATTEMPTED
    message: str
    function: Callable | None = field(default=None, repr=False, compare=False)  # the learner's function as checked

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def line(self) -> str:
        return f"[ex {self.exercise} {self.name}] {self.status}: {self.message}"

    def __repr__(self) -> str:
        return self.line()


class _Fail(Exception):
    """Raised inside a checker to stop at the first problem found."""


class _LearnerError(Exception):
    """An exception raised by the learner's code (not by the checker), carried out of the checker."""

    def __init__(self, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


_MISSING = object()


def _library_origin(fn: Any) -> str | None:
    """'module.name' when ``fn`` is mlakit's own code (a function, class, method or callable instance), else None."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)  # a bound method
    module = getattr(fn, "__module__", None)
    if not isinstance(fn, (type, types.FunctionType, types.BuiltinFunctionType)) and callable(fn):
        module = type(fn).__module__  # an instance of a library class (a module, a rotary embedding, ...)
        fn = type(fn)
    if isinstance(module, str) and (module == "mlakit" or module.startswith("mlakit.")):
        return f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', '?'))}"
    return None


def _snapshot(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else None


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b) or (a.is_floating_point() and
                                                                                   torch.allclose(a, b, equal_nan=True, rtol=0, atol=0)))


class Answer:
    """The learner's function as a checker calls it.

    Calling it calls the learner's function, with two differences: an
    exception it raises is marked as the learner's (so the checker reports
    "your code raised ..." and never blames the learner for its own errors),
    and a tensor argument it changes in place fails the check with a hint
    (unless the exercise says the function writes into that argument).
    """

    def __init__(self, fn: Callable, name: str, may_modify: Iterable[int | str] = ()):
        self.fn, self.name, self.may_modify = fn, name, set(may_modify)
        try:  # the names of the positional parameters (a *args parameter names no single argument)
            self._params = [p.name for p in inspect.signature(fn).parameters.values()
                            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            self._params = []

    def _arg_name(self, index: int) -> str:
        return f"`{self._params[index]}`" if index < len(self._params) else f"number {index + 1}"

    def __call__(self, *args, **kwargs):
        watched = [(i, a, _snapshot(a)) for i, a in enumerate(args)
                   if isinstance(a, torch.Tensor) and i not in self.may_modify
                   and (i >= len(self._params) or self._params[i] not in self.may_modify)]
        watched += [(k, a, _snapshot(a)) for k, a in kwargs.items()
                    if isinstance(a, torch.Tensor) and k not in self.may_modify]
        try:
            out = self.fn(*args, **kwargs)
        except (NotImplementedError, _Fail):
            raise
        except Exception as e:  # noqa: BLE001 - whatever the learner's code raises is reported as theirs
            raise _LearnerError(e) from e
        for key, arg, before in watched:
            if not _same_tensor(arg, before):
                which = self._arg_name(key) if isinstance(key, int) else f"`{key}`"
                raise _Fail(f"`{self.name}` changed its argument {which} in place, so the caller's tensor is no "
                            "longer what it passed. Hint: build a new tensor (x = x * 2, torch.cat, ...) instead "
                            "of writing into the input (x *= 2, x[...] = ..., x.mul_(...))")
        return out


def _run(exercise: str, name: str, body: Callable[..., str], answer: Any = _MISSING,
         may_modify: Iterable[int | str] = ()) -> CheckResult:
    """Run one checker body and print its result line; never raises.

    ``body(Answer)`` returns the PASS message or raises :class:`_Fail`. The
    older form ``body()`` (no answer) is still accepted.
    """
    function = None
    try:
        if answer is _MISSING:
            message = body()
        else:
            if answer is None:
                raise _Fail(f"`{name}` is not defined. Run the cell that defines it first; if that cell shows an "
                            "error (a SyntaxError, say), fix it and run it again")
            if not callable(answer):
                raise _Fail(f"`{name}` should be a function; it is a {type(answer).__name__}")
            origin = _library_origin(answer)
            if origin is not None:
                raise _Fail(f"this is the library's own `{origin}`, not your code. Write `{name}` yourself "
                            "(calling library building blocks inside it is fine); the lesson goes on with the "
                            "library's version meanwhile")
            function = answer
            message = body(Answer(answer, name, may_modify))
        result = CheckResult(exercise, name, PASS, message, function)
    except NotImplementedError:
        result = CheckResult(exercise, name, NOT_ATTEMPTED,
                             f"replace the `raise NotImplementedError` in `{name}` with your code, then run this cell again",
                             function)
    except _Fail as e:
        result = CheckResult(exercise, name, FAIL, str(e), function)
    except _LearnerError as e:
        result = CheckResult(exercise, name, FAIL, f"your code raised {e}", function)
    except Exception as e:  # noqa: BLE001 - a checker never crashes the notebook
        if answer is _MISSING:  # the older form cannot tell the learner's errors from the checker's
            result = CheckResult(exercise, name, FAIL, f"your code raised {type(e).__name__}: {e}", function)
        else:
            result = CheckResult(exercise, name, FAIL,
                                 f"the checker itself failed on your answer ({type(e).__name__}: {e}). That is a "
                                 "bug in mlakit's checker, not necessarily in your code: please report it", function)
    print(result.line())
    return result


def checker(exercise: str, name: str, may_modify: Iterable[int | str] = ()) -> Callable:
    """Make a check function from a checker body ``body(answer) -> PASS message``.

    The check function takes the learner's function, or nothing: then it looks
    ``name`` up in the caller's namespace (the notebook's), so a check cell
    still reports, rather than raising NameError, when the cell that defines
    the function failed. ``may_modify`` lists the arguments (positions or
    names) the exercise asks the function to write into.
    """

    def wrap(body: Callable[[Answer], str]) -> Callable[..., CheckResult]:
        @functools.wraps(body)
        def check(answer: Any = _MISSING) -> CheckResult:
            if answer is _MISSING:
                answer = sys._getframe(1).f_globals.get(name)
            return _run(exercise, name, body, answer, may_modify)

        check.exercise, check.answer_name = exercise, name
        return check

    return wrap


class _ShapeRecorder(TorchFunctionMode):
    """Records the shape of every tensor produced by a torch function or method while active.

    Checkers run the learner's function under it to see which intermediate
    tensors the answer builds (a per-head expansion of keys or values).
    """

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.shapes.append(tuple(value.shape))
        return out

    def holding(self, length: int, widths: Iterable[int]) -> list[tuple[int, ...]]:
        """The recorded shapes with an axis of size ``length`` and another one of a size in ``widths``.

        ``holding(S, {d_v, n_h * d_v})``: the tensors that hold values (d_v wide)
        of S cached tokens; with their elements summed, a loop that expands one
        head at a time is caught as well as one tensor holding every head.
        """
        widths = set(widths)
        return [s for s in self.shapes
                if any(n == length and any(m in widths for j, m in enumerate(s) if j != i) for i, n in enumerate(s))]


def _expansion(shapes: list[tuple[int, ...]], total: int) -> str | None:
    """How recorded ``shapes`` hold ``total`` or more elements: "a (..) tensor", or "(..) tensors, one slice at a
    time" when only together (a loop over heads); None when they hold fewer."""
    if not shapes or sum(math.prod(s) for s in shapes) < total:
        return None
    largest = max(shapes, key=math.prod)
    if math.prod(largest) >= total:
        return f"a {largest} tensor"
    return f"{largest} tensors, one slice at a time"


def _expect_tensor(value, expected_shape: tuple, what: str) -> torch.Tensor:
    """``value`` when it is a tensor of the expected shape (any dtype), else a FAIL that names the difference."""
    if not isinstance(value, torch.Tensor):
        raise _Fail(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(expected_shape):
        got, want = tuple(value.shape), tuple(expected_shape)
        dims = [i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b]
        where = f" (dimension {dims[0]} differs)" if len(got) == len(want) and dims else ""
        raise _Fail(f"{what} has shape {got}; expected {want}{where}")
    return value


def _expect_sequence(value, length: int, what: str) -> tuple:
    """A tuple or a list of ``length`` items, as a tuple (either is a right answer where "a tuple" is asked)."""
    if not isinstance(value, (tuple, list)):
        raise _Fail(f"{what} should be a tuple of {length} items, got {type(value).__name__}")
    if len(value) != length:
        raise _Fail(f"{what} should have {length} items; it has {len(value)}")
    return tuple(value)


def _as_number(value, what: str) -> int | float:
    """A Python int or float from an int, a float, a NumPy scalar or a one-element tensor; FAIL otherwise."""
    if isinstance(value, bool):
        raise _Fail(f"{what} should be a number, got a bool")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    raise _Fail(f"{what} should be a number, got {type(value).__name__}")


def _number_or_value(value: Any) -> Any:
    """A Python number for a number in any form (NumPy scalar, one-element tensor); anything else as it is."""
    try:
        return _as_number(value, "the answer")
    except _Fail:
        return value


_TOLERANCE = {torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 1e-2)}


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Whether answer ``a`` equals reference ``b`` within the reference dtype's tolerance, compared in float64.

    Any floating dtype is accepted for the answer (a float64 answer is as right
    as a float32 one); -inf, inf and NaN must sit at the same places.
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return False
    atol, rtol = max(atol, _TOLERANCE.get(b.dtype, (0, 0))[0]), max(rtol, _TOLERANCE.get(b.dtype, (0, 0))[1])
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return False
    finite = torch.isfinite(b)
    if not torch.equal(torch.isfinite(a), finite) or not torch.equal(a[~finite & ~torch.isnan(b)], b[~finite & ~torch.isnan(b)]):
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


def _fit(value: Any, float_dtype: torch.dtype | None) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and float_dtype is not None \
            and value.dtype != float_dtype:
        return value.to(float_dtype)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0 and hasattr(value, "item"):
        return value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_fit(v, float_dtype) for v in value)
    return value


def use_or_fallback(result: CheckResult, *functions: Callable) -> Callable:
    """The learner's function when its check passed, else the library's (and say so).

    ``use_or_fallback(ex1, checks.reference_causal_scores)``. The learner's
    function is the one the check ran (``result.function``), wrapped so that its
    results fit the cells that use it: floating tensors come back in the dtype
    of the floating inputs (the default dtype when there are none), NumPy
    scalars as Python numbers and lists as tuples. The older form
    ``use_or_fallback(result, learner, reference)`` is still accepted.
    """
    if len(functions) not in (1, 2):
        raise TypeError("use_or_fallback(result, reference)")
    reference = functions[-1]
    learner = result.function if result.function is not None else (functions[0] if len(functions) == 2 else None)
    if not result.passed or learner is None:
        print(f"(using the library's version of `{result.name}` until exercise {result.exercise} passes)")
        return reference

    @functools.wraps(learner)
    def fitted(*args, **kwargs):
        dtypes = [a.dtype for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
        return _fit(learner(*args, **kwargs), dtypes[0] if dtypes else torch.get_default_dtype())

    return fitted
