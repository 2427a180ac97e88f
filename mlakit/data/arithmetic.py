"""Multi-digit addition with worked steps: the course's pretraining task.

A problem is written ``prompt + completion``. With steps, the completion works
the sum digit by digit from the right, carrying as a person would, then gives
the answer after ``=``::

    47+85=[7+5=12,4+8+1=13]132

Without steps it is just ``47+85=132``. The worked steps are what a small model
can learn quickly on a CPU (each step is a one-digit sum), and the same
generator, with its verifier, feeds the synthetic-data and GRPO lessons later.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

STEP_OPEN, STEP_CLOSE = "[", "]"


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    @property
    def key(self) -> tuple[int, int]:
        """Canonical identity: a+b and b+a are the same problem (for dedup and for splits)."""
        return (min(self.a, self.b), max(self.a, self.b))

    def steps(self) -> str:
        """The digit-by-digit column sums with carries: "7+5=12,4+8+1=13"."""
        xs, ys = str(self.a)[::-1], str(self.b)[::-1]
        parts, carry = [], 0
        for i in range(max(len(xs), len(ys))):
            terms = [int(d[i]) for d in (xs, ys) if i < len(d)] + ([carry] if carry else [])
            total = sum(terms)
            parts.append("+".join(map(str, terms)) + f"={total}")
            carry = total // 10
        return ",".join(parts)

    def completion(self, with_steps: bool = True) -> str:
        return (f"{STEP_OPEN}{self.steps()}{STEP_CLOSE}" if with_steps else "") + self.answer

    def text(self, with_steps: bool = True) -> str:
        return self.prompt + self.completion(with_steps)


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion: the digits after the closing step bracket (or the whole
    completion without steps), or inside <answer>...</answer> when present. None if there are none."""
    tagged = re.search(r"<answer>\s*(-?\d+)\s*</answer>", completion)
    if tagged:
        return tagged.group(1)
    tail = completion.rsplit(STEP_CLOSE, 1)[-1]
    m = re.match(r"\s*(-?\d+)", tail)
    return m.group(1) if m else None


@dataclass
class AdditionTask:
    """Seeded generator and verifier of additions of numbers with ``min_digits``..``max_digits`` digits."""

    min_digits: int = 1
    max_digits: int = 2
    with_steps: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"digits must satisfy 1 <= min_digits ({self.min_digits}) <= max_digits ({self.max_digits})")

    def _number(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        return rng.randint(low, 10**digits - 1)

    def sample(self, rng: random.Random) -> Problem:
        return Problem(self._number(rng), self._number(rng))

    def generate(self, n: int, seed: int = 0) -> Iterator[Problem]:
        """``n`` problems (repeats possible), reproducible from ``seed``."""
        rng = random.Random(seed)
        for _ in range(n):
            yield self.sample(rng)

    def all_problems(self) -> list[Problem]:
        """Every problem of the task, when there are few enough to list (max_digits <= 3)."""
        if self.max_digits > 3:
            raise ValueError("all_problems lists at most 3-digit additions; sample with generate() instead")
        low = 0 if self.min_digits == 1 else 10 ** (self.min_digits - 1)
        numbers = range(low, 10**self.max_digits)
        return [Problem(a, b) for a in numbers for b in numbers]

    def verify(self, problem: Problem, completion: str) -> bool:
        """True when the completion's final answer equals the sum (worked steps are not graded here)."""
        return extract_answer(completion) == problem.answer


def make_splits(problems: list[Problem], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> dict[str, list[Problem]]:
    """Deal problems into train / validation / test by canonical key: no problem (nor its mirror
    b+a) lands in two splits. Duplicates of a key stay together."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions={fractions} must be three non-negative numbers summing to 1")
    keys = sorted({p.key for p in problems})
    random.Random(seed).shuffle(keys)
    n_train = int(len(keys) * fractions[0])
    n_val = int(len(keys) * fractions[1])
    owner = {}
    for i, key in enumerate(keys):
        owner[key] = "train" if i < n_train else ("validation" if i < n_train + n_val else "test")
    splits: dict[str, list[Problem]] = {"train": [], "validation": [], "test": []}
    for p in problems:
        splits[owner[p.key]].append(p)
    return splits
