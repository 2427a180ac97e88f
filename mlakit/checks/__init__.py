"""Exercise self-checks, one module per lesson, all importable from here.

See :mod:`mlakit.checks._core` for the format every checker follows.
"""

from ._core import FAIL, NOT_ATTEMPTED, PASS, RESULT_LINE, CheckResult, use_or_fallback
from .lesson01 import *  # noqa: F403
from .lesson01 import __all__ as _l01

__all__ = ["CheckResult", "use_or_fallback", "PASS", "FAIL", "NOT_ATTEMPTED", "RESULT_LINE", *_l01]
