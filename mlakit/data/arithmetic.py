"""Multi-digit addition with worked steps: the course's pretraining task.

A problem is written ``prompt + completion``. With steps, the completion works
the sum digit by digit from the right, carrying as a person would, then gives
the answer after ``=``::

    47+85=[7+5=12,4+8+1=13]132

Without steps it is just ``47+85=132``. The worked steps are what a small model
can learn quickly on a CPU (each step is a one-digit sum; Lee et al. 2023,
arXiv 2307.03381, on scratchpads), and the same generator, with its verifier,
feeds the synthetic-data and GRPO lessons later. ``num_operands`` > 2 sums more
numbers the same way (``3+4+5=[3+4+5=12]12``).

The verifier is strict: the completion must be the answer (or the worked steps
then the answer) and nothing else, or R1's ``<think>...</think><answer>N</answer>``
(:mod:`mlakit.data.reasoning`). ``132`` passes for 47+85, ``132 apples`` does not.
:func:`extract_answer` stays the lenient reader it always was.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .task import Task, check_int

STEP_OPEN, STEP_CLOSE = "[", "]"
MAX_DIGITS = 18  # operands up to 10^18: sums stay exact in Python and short enough for a char model
MAX_OPERANDS = 8  # column sums of up to 8 digits plus a carry stay below 100
_PLAIN_ANSWER = re.compile(r"(?:\[[^\[\]]*\])?(\d+)")  # optional worked steps, then the digits


@dataclass(frozen=True)
class Problem:
    """An addition a + b (+ each of ``rest``): the course's pretraining problem."""

    a: int
    b: int
    rest: tuple[int, ...] = ()  # further operands when the task sums more than two numbers

    def __repr__(self) -> str:  # two operands print as they always did
        return f"Problem(a={self.a}, b={self.b}" + (f", rest={self.rest})" if self.rest else ")")

    @property
    def operands(self) -> tuple[int, ...]:
        return (self.a, self.b, *self.rest)

    @property
    def prompt(self) -> str:
        return "+".join(map(str, self.operands)) + "="

    @property
    def answer(self) -> str:
        return str(sum(self.operands))

    @property
    def key(self) -> tuple[int, ...]:
        """Canonical identity: a+b and b+a are the same problem (for dedup and for splits): the sorted
        operands, (min(a, b), max(a, b)) for two."""
        return tuple(sorted(self.operands))

    def steps(self) -> str:
        """The digit-by-digit column sums with carries: "7+5=12,4+8+1=13"."""
        columns = [str(x)[::-1] for x in self.operands]
        parts, carry = [], 0
        for i in range(max(map(len, columns))):
            terms = [int(d[i]) for d in columns if i < len(d)] + ([carry] if carry else [])
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
class AdditionTask(Task):
    """Seeded generator and strict verifier of sums of ``num_operands`` numbers with
    ``min_digits``..``max_digits`` digits each."""

    name = "addition"
    min_digits: int = 1  # fewest digits of an operand (1 includes 0..9)
    max_digits: int = 2  # most digits of an operand: the difficulty knob
    with_steps: bool = True  # reference completions carry the worked column sums
    num_operands: int = 2  # numbers summed per problem

    def __post_init__(self) -> None:
        check_int("min_digits", self.min_digits, 1, MAX_DIGITS)
        if isinstance(self.max_digits, bool) or not isinstance(self.max_digits, int) \
                or not self.min_digits <= self.max_digits <= MAX_DIGITS:
            raise ValueError(f"max_digits={self.max_digits!r} is invalid: must be an integer in "
                             f"[min_digits={self.min_digits}, {MAX_DIGITS}] (digits must satisfy "
                             "1 <= min_digits <= max_digits)")
        check_int("num_operands", self.num_operands, 2, MAX_OPERANDS)

    def _number(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        low = 0 if digits == 1 else 10 ** (digits - 1)
        return rng.randint(low, 10**digits - 1)

    def sample(self, rng: random.Random) -> Problem:
        a, b = self._number(rng), self._number(rng)
        return Problem(a, b, tuple(self._number(rng) for _ in range(self.num_operands - 2)))

    def generate(self, n: int, seed: int = 0) -> Iterator[Problem]:
        """``n`` problems (repeats possible), reproducible from ``seed``."""
        rng = random.Random(seed)
        for _ in range(n):
            yield self.sample(rng)

    def all_problems(self) -> list[Problem]:
        """Every problem of the task, when there are few enough to list (two operands, max_digits <= 3)."""
        if self.max_digits > 3 or self.num_operands != 2:
            raise ValueError("all_problems lists at most 3-digit additions of two numbers; sample with "
                             "generate() instead")
        low = 0 if self.min_digits == 1 else 10 ** (self.min_digits - 1)
        numbers = range(low, 10**self.max_digits)
        return [Problem(a, b) for a in numbers for b in numbers]

    def check_answer(self, problem: Problem, answer: str, plain: bool = False) -> bool:
        """The digits of the sum exactly (no sign, no leading zero, no words); in the plain format
        the worked steps may come first (they are not graded here)."""
        if plain:
            m = _PLAIN_ANSWER.fullmatch(answer)
            return m is not None and m.group(1) == problem.answer
        return answer == problem.answer

    def reasoning(self, problem: Problem) -> str:
        return problem.steps()

    def reference_completion(self, problem: Problem, reasoning: bool = False) -> str:
        return super().reference_completion(problem, True) if reasoning else problem.completion(self.with_steps)

    def difficulty(self, problem: Problem) -> int:
        """Digits of the longest operand."""
        return max(len(str(x)) for x in problem.operands)


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
