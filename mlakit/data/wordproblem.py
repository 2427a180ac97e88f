"""Word problems: many surface forms of one arithmetic problem, for the dedup and contamination demos.

"tom has 12 apples and buys 5 more. how many apples does tom have now?" and
"there are 12 marbles in a box and 5 marbles in a bag. how many marbles are
there in all?" are one problem, 12 + 5, in two wordings. Every wording of a
problem shares its key, and the key of a sum is the key of the same sum in the
``addition`` task (the sorted operands), so matching keys finds "12+5=" in
a training set of word problems as well: what n-gram overlap cannot see
(REFERENCE §8: for short arithmetic strings n-grams say nothing, keys do).

Two wordings from one template with a different name or item differ in a few
words (high Jaccard similarity of their shingles: near duplicates); two
templates share little text (low similarity, yet the same key).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .task import Task, check_int

NAMES = ("tom", "ana", "li", "sara", "omar", "mia", "ken", "zoe")
ITEMS = ("apples", "pencils", "marbles", "stickers", "books", "cookies")
TEMPLATES = {  # lowercase and plain punctuation: the course's character tokenizer covers them
    "+": (
        "{name} has {a} {item} and buys {b} more. how many {item} does {name} have now?",
        "{name} had {a} {item} and got {b} more from a friend. how many {item} does {name} have?",
        "there are {a} {item} in a box and {b} {item} in a bag. how many {item} are there in all?",
        "{name} picked {a} {item} in the morning and {b} {item} in the afternoon. "
        "how many {item} did {name} pick?",
    ),
    "-": (
        "{name} has {a} {item} and gives {b} of them away. how many {item} does {name} have left?",
        "there were {a} {item} on the table. {name} took {b} of them. how many {item} are left?",
        "{name} had {a} {item} and lost {b}. how many {item} does {name} have now?",
    ),
}


@dataclass(frozen=True)
class WordProblem:
    op: str  # "+" or "-"
    a: int
    b: int
    template: int = 0  # index into TEMPLATES[op]
    name: str = NAMES[0]
    item: str = ITEMS[0]

    @property
    def prompt(self) -> str:
        return TEMPLATES[self.op][self.template].format(name=self.name, item=self.item, a=self.a, b=self.b) + " "

    @property
    def answer(self) -> str:
        return str(self.a + self.b if self.op == "+" else self.a - self.b)

    @property
    def key(self) -> tuple:
        """The arithmetic underneath: the sorted operands for a sum (the addition task's key), else
        ("-", a, b). Wording, name and item are not part of it."""
        return tuple(sorted((self.a, self.b))) if self.op == "+" else ("-", self.a, self.b)


@dataclass
class WordProblemTask(Task):
    """Seeded word problems over sums and differences, with their wordings."""

    name = "wordproblem"
    min_digits: int = 1  # fewest digits of a number in the problem
    max_digits: int = 2  # most digits: the difficulty knob
    operations: str = "+-"  # which of "+" and "-" to ask

    def __post_init__(self) -> None:
        check_int("min_digits", self.min_digits, 1, 9)
        check_int("max_digits", self.max_digits, self.min_digits, 9)
        ops = self.operations
        if not isinstance(ops, str) or not ops or set(ops) - set(TEMPLATES) or len(set(ops)) != len(ops):
            raise ValueError(f"operations={ops!r} is invalid: must be '+', '-' or '+-'")

    def _number(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    def sample(self, rng: random.Random) -> WordProblem:
        op = rng.choice(self.operations)
        a, b = self._number(rng), self._number(rng)
        if op == "-" and a < b:
            a, b = b, a  # differences stay non-negative
        return WordProblem(op, a, b, rng.randrange(len(TEMPLATES[op])), rng.choice(NAMES), rng.choice(ITEMS))

    def surface_forms(self, problem: WordProblem) -> list[WordProblem]:
        """Every distinct wording of ``problem`` (templates x names x items), all sharing its key."""
        forms = {}
        for t in range(len(TEMPLATES[problem.op])):
            for name in NAMES:
                for item in ITEMS:
                    form = WordProblem(problem.op, problem.a, problem.b, t, name, item)
                    forms.setdefault(form.prompt, form)  # a template without a name gives each text once
        return list(forms.values())

    def rephrase(self, problem: WordProblem, rng: random.Random, same_template: bool = False) -> WordProblem:
        """Another wording of ``problem``: a new name and item, and with ``same_template=False`` maybe a
        new template (``same_template=True`` gives a near duplicate)."""
        forms = [p for p in self.surface_forms(problem)
                 if p.prompt != problem.prompt and (not same_template or p.template == problem.template)]
        return rng.choice(forms)

    def check_answer(self, problem: WordProblem, answer: str, plain: bool = False) -> bool:
        return answer == problem.answer

    def reasoning(self, problem: WordProblem) -> str:
        return f"{problem.a}{problem.op}{problem.b}={problem.answer}"

    def difficulty(self, problem: WordProblem) -> int:
        """Digits of the larger number."""
        return len(str(max(problem.a, problem.b)))


__all__ = ["WordProblem", "WordProblemTask", "TEMPLATES", "NAMES", "ITEMS"]
