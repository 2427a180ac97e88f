"""Exercise self-checks, one module per lesson (``lesson01.py``, ``lesson02.py``, ...), all importable from here.

See :mod:`mlakit.checks._core` for the format every checker follows. Each lesson
module lists its checkers and references in ``__all__``; they are re-exported
here, so notebooks write ``from mlakit import checks`` and
``checks.check_causal_scores(...)``.
"""

import importlib
import pkgutil

from ._core import FAIL, NOT_ATTEMPTED, PASS, RESULT_LINE, CheckResult, use_or_fallback

__all__ = ["CheckResult", "use_or_fallback", "PASS", "FAIL", "NOT_ATTEMPTED", "RESULT_LINE"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("lesson"):
        _module = importlib.import_module(f"{__name__}.{_info.name}")
        for _name in _module.__all__:
            globals()[_name] = getattr(_module, _name)
        __all__ += list(_module.__all__)
