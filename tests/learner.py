"""Answers as a learner writes them: the library's reference wrapped in a function of the learner's own.

Checkers refuse the library's own functions as answers (``mlakit grade`` says
so), so tests that want a right answer pass ``as_learner(checks.reference_x)``:
a function defined here, outside mlakit, that calls the reference.
"""

import functools
import inspect

import torch


def as_learner(reference):
    @functools.wraps(reference)
    def answer(*args, **kwargs):
        return reference(*args, **kwargs)

    answer.__module__ = __name__
    del answer.__wrapped__  # the learner's function, not the library's
    return answer


def _writes_into(reference, arg):
    """The reference's result, but argument `arg` of the caller is changed in place afterwards."""
    def answer(*args):
        out = reference(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
        args[arg].add_(1)
        return out

    return answer


def assert_in_place_change_fails(checks, check, reference, arg, name):
    """Checker `check` fails an answer that changes its argument `arg` (named `name` in the reference) in place.

    The checkers hand the learner's function their own tensors (no copies), so a change shows; the answer
    takes *args, so the argument is named by its position.
    """
    assert list(inspect.signature(getattr(checks, reference)).parameters)[arg] == name
    result = getattr(checks, check)(_writes_into(getattr(checks, reference), arg))
    assert result.status == "FAIL", result.message
    assert f"changed its argument number {arg + 1} in place" in result.message


def _not_done(*args, **kwargs):
    raise NotImplementedError


def assert_checker_basics(check, reference, lesson: str, output: str, refused=()) -> None:
    """What every checker of lesson ``lesson`` ("07") does with the usual answers: the reference as a learner
    writes it passes, a stub is not attempted, an error fails naming itself, and each function of ``refused``
    (the library's own) fails as such. ``output`` is what the checks printed (``capsys.readouterr().out``
    afterwards, so pass a callable): one "[ex NN." line per answer."""
    from mlakit.course.checks import FAIL, NOT_ATTEMPTED, PASS

    assert check(as_learner(reference)).status == PASS
    assert check(_not_done).status == NOT_ATTEMPTED
    broken = check(lambda *a: 1 / 0)
    assert broken.status == FAIL and "ZeroDivisionError" in broken.message
    for own in refused:
        result = check(own)
        assert result.status == FAIL and "library's own" in result.message
    assert output().count(f"[ex {lesson}.") == 3 + len(refused)
    assert check.__doc__.startswith(f"Exercise {lesson}.")
