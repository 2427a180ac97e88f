"""Synthetic data: seeded problem generators, each with a verifier, and leak-free splits.

The course makes all of its data: nothing is downloaded. A generator yields
:class:`Problem` objects (prompt, answer, worked steps); a verifier checks an
answer string against a problem; :func:`make_splits` deals problems into
train / validation / test so that no problem (under its canonical key) is in
two splits.
"""

from .arithmetic import AdditionTask, Problem, extract_answer, make_splits
from .lm import LMBatches, encode_problems

__all__ = ["AdditionTask", "Problem", "extract_answer", "make_splits", "LMBatches", "encode_problems"]
