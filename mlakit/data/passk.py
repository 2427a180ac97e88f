"""pass@k, the unbiased estimator of Chen et al. 2021 (Codex, arXiv 2107.03374, §2.1).

Draw n >= k samples per problem, count the c correct ones; the chance that at
least one of k samples drawn without replacement from those n is correct is

    pass@k = 1 - C(n - c, k) / C(n, k)

Averaged over problems this is unbiased, where 1 - (1 - c/n)^k is not. The
binomials overflow floats for large n, so, as in the paper's numpy code, the
ratio is written as a product of k terms that each lie in [0, 1]:

    C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)

(no term when c = 0: pass@k = 0; and when n - c < k every draw of k
contains a correct sample: pass@k = 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for ``n`` samples of which ``c`` are correct."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}={value!r} is invalid: must be an integer")
    if n < 1:
        raise ValueError(f"n={n} is invalid: must be >= 1")
    if not 0 <= c <= n:
        raise ValueError(f"c={c} is invalid: must be in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is invalid: must be in [1, n={n}]")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(n: int, correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems, each with ``n`` samples and ``correct[i]`` of them right."""
    if not correct:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return sum(pass_at_k(n, c, k) for c in correct) / len(correct)


__all__ = ["pass_at_k", "mean_pass_at_k"]
