"""Reproducibility and progress: the two things every lesson cell relies on.

``seed_everything`` seeds Python, NumPy and torch and pins torch's thread count:
float sums differ with the number of threads, so a notebook that pins threads
reproduces its stored outputs. It returns nothing, so it can end a cell
without printing a generator object.

``progress`` wraps ``tqdm.auto`` (a widget bar in Jupyter, a text bar in a
terminal) behind one switch. ``TQDM_DISABLE`` does not reach the notebook bar,
so mlakit reads its own: ``MLAKIT_PROGRESS=0`` or :func:`set_progress`.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable

import numpy as np
import torch

_PROGRESS: bool | None = None  # None: follow the MLAKIT_PROGRESS environment variable


def seed_everything(seed: int = 0, threads: int | None = None) -> None:
    """Seed random, numpy and torch; with ``threads``, pin torch's intra-op thread count."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)


def set_progress(enabled: bool | None) -> None:
    """Turn mlakit's progress bars on or off (None: back to MLAKIT_PROGRESS, default on)."""
    global _PROGRESS
    _PROGRESS = enabled


def progress_enabled() -> bool:
    if _PROGRESS is not None:
        return _PROGRESS
    return os.environ.get("MLAKIT_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str | None = None, **kwargs):
    """A ``tqdm.auto`` bar that honours mlakit's switch (passed explicitly as ``disable=``)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not progress_enabled())
    kwargs.setdefault("leave", True)
    return tqdm(iterable, total=total, desc=desc, **kwargs)


def finite_float(value) -> float | None:
    """``value`` as a finite float (a CSV cell, a log entry), or None when it is empty, not a number, or infinite."""
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
