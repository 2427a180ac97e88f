"""The one interface every synthetic task follows: sample, verify, and validated difficulty knobs.

A task is a dataclass whose fields are its difficulty knobs (``max_digits``,
``num_numbers``, ...), each checked in ``__post_init__`` with a message that
names the field and its allowed range. It offers:

- ``sample(rng)``: one problem from a ``random.Random``. A problem has
  ``.prompt``, ``.answer`` (the reference answer string) and ``.key``, a
  canonical, hashable key that two surface forms of one problem share
  ("47+85=" and "85+47="; two wordings of one word problem), used by
  exact dedup, leak-free splits and decontamination;
- ``verify(problem, completion)``: strict. The completion is read by
  :func:`~mlakit.data.reasoning.parse_completion` (R1's tags, or the plain
  format), then the task checks the answer text with ``check_answer``;
- ``reference_completion(problem, reasoning)``: the generator's own gold
  completion, plain or in R1's ``<think>...</think><answer>...</answer>``;
- ``difficulty(problem)``: a small integer, for acceptance rates per difficulty.

This is the generator + verifier pair behind R1's rejection-sampled SFT data
(R1 §2.3.3) and its rule rewards (§2.2.2).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from typing import Any, ClassVar

from .reasoning import format_reasoning, parse_completion


def check_int(name: str, value: Any, low: int, high: int) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} is invalid: must be an integer in [{low}, {high}]")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is invalid: must be one of {', '.join(map(repr, choices))}")


def key_string(key: Any) -> str:
    """A key as a stable string (JSON of nested lists), for JSONL records and hashing."""

    def plain(x):
        return [plain(v) for v in x] if isinstance(x, (tuple, list)) else x

    return json.dumps(plain(key), separators=(",", ":"))


class Task:
    """Base of the synthetic tasks; subclasses are dataclasses and set ``name``."""

    name: ClassVar[str] = "task"

    def sample(self, rng: random.Random):
        raise NotImplementedError

    def generate(self, n: int, seed: int = 0) -> Iterator:
        """``n`` problems (repeats possible), reproducible from ``seed``."""
        check_int("n", n, 0, 10**9)
        rng = random.Random(seed)
        for _ in range(n):
            yield self.sample(rng)

    def check_answer(self, problem, answer: str, plain: bool = False) -> bool:
        """Is ``answer`` (already read from the completion) exactly right? ``plain``: no tags were used."""
        return answer == problem.answer

    def verify(self, problem, completion: str) -> bool:
        """Strict: the completion reads cleanly (see reasoning.py) and its answer is exactly right."""
        parsed = parse_completion(completion)
        return parsed.ok and self.check_answer(problem, parsed.answer, plain=parsed.plain)

    def reasoning(self, problem) -> str:
        """The worked reasoning for the think block (default: none)."""
        return ""

    def reference_completion(self, problem, reasoning: bool = False) -> str:
        if reasoning:
            return format_reasoning(self.reasoning(problem), problem.answer)
        return problem.answer

    def difficulty(self, problem) -> int:
        return 0

    def knobs(self) -> dict[str, Any]:
        """The difficulty knobs and their values (the dataclass fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


__all__ = ["Task", "check_int", "check_choice", "key_string"]
