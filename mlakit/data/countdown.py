"""Countdown: reach a target from a few numbers with + - * / and parentheses (TinyZero's R1-Zero task).

"make 75 with 3 7 25 50:" is answered by an expression such as ``(50-25)*3``.
Each given number may be used at most once (a number given twice may be used
twice); not every number has to be used. The generator builds the target the
way the game is played, combining two numbers of a pool until one value is
left, so every problem has a reference solution (``problem.answer``) and its
worked steps ("50-25=25,25*3=75") for the think block.

The verifier never calls ``eval``: :func:`parse_expression` is a small
recursive-descent parser over the grammar

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := NUMBER | "(" expr ")"

on integers only. Anything else is rejected before any arithmetic: a
character outside digits, the four operators, parentheses and spaces
(``__import__('os')``), ``**``, a unary minus, a number with a leading zero,
division that is not exact (7/2) or by zero, a number not given or used more
often than given, nesting deeper than :data:`MAX_DEPTH`, text longer than
:data:`MAX_CHARS`.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from .task import Task, check_int

MAX_CHARS = 256  # longest expression the verifier reads
MAX_DEPTH = 32  # deepest parenthesis nesting it follows (keeps the recursion shallow)
_ALLOWED = set("0123456789+-*/() ")
_SAMPLE_TRIES = 1000  # rejection sampling of targets in range; a failure means impossible knobs


class ExpressionError(ValueError):
    """An expression the countdown verifier refuses, with the reason."""


def _tokens(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"expression longer than {MAX_CHARS} characters")
    bad = sorted(set(text) - _ALLOWED)
    if bad:
        raise ExpressionError(f"character {bad[0]!r} is not allowed (digits, + - * / ( ) and spaces only)")
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == " ":
            i += 1
        elif ch.isdigit():
            j = i
            while j < len(text) and text[j].isdigit():
                j += 1
            if text[i] == "0" and j - i > 1:
                raise ExpressionError(f"number {text[i:j]!r} has a leading zero")
            out.append(text[i:j])
            i = j
        else:
            out.append(ch)
            i += 1
    return out


def parse_expression(text: str) -> tuple[int, list[int]]:
    """(value, numbers used in order) of an integer expression; raises ExpressionError."""
    toks = _tokens(text)
    pos = 0
    used: list[int] = []

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def factor(depth: int) -> int:
        tok = peek()
        if tok is None:
            raise ExpressionError("expression ends where a number or '(' was expected")
        if tok.isdigit():
            take()
            used.append(int(tok))
            return int(tok)
        if tok == "(":
            if depth >= MAX_DEPTH:
                raise ExpressionError(f"parentheses nested deeper than {MAX_DEPTH}")
            take()
            value = expr(depth + 1)
            if peek() != ")":
                raise ExpressionError("unbalanced parentheses")
            take()
            return value
        raise ExpressionError(f"unexpected {tok!r} where a number or '(' was expected")

    def term(depth: int) -> int:
        value = factor(depth)
        while peek() in ("*", "/"):
            op = take()
            rhs = factor(depth)
            if op == "*":
                value *= rhs
            elif rhs == 0 or value % rhs:
                raise ExpressionError(f"division {value}/{rhs} is not exact")
            else:
                value //= rhs
        return value

    def expr(depth: int) -> int:
        value = term(depth)
        while peek() in ("+", "-"):
            value = value + term(depth) if take() == "+" else value - term(depth)
        return value

    value = expr(0)
    if pos != len(toks):
        raise ExpressionError(f"unexpected {toks[pos]!r} after a complete expression")
    return value, used


@dataclass(frozen=True)
class CountdownProblem:
    numbers: tuple[int, ...]
    target: int
    solution: str = field(compare=False)  # a reference expression that reaches the target
    steps: str = field(default="", compare=False)  # its combinations, "50-25=25,25*3=75"

    @property
    def prompt(self) -> str:
        return f"make {self.target} with {' '.join(map(str, self.numbers))}:"

    @property
    def answer(self) -> str:
        return self.solution

    @property
    def key(self) -> tuple:
        """The numbers as a multiset and the target: the order the numbers are listed in does not matter."""
        return ("countdown", tuple(sorted(self.numbers)), self.target)


def check_solution(problem: CountdownProblem, expression: str) -> str | None:
    """None when ``expression`` reaches the target with allowed numbers, else the reason it does not."""
    try:
        value, used = parse_expression(expression)
    except ExpressionError as e:
        return str(e)
    over = Counter(used) - Counter(problem.numbers)
    if over:
        n = min(over)
        return f"{n} is not given" if n not in problem.numbers else f"{n} is used more often than given"
    if value != problem.target:
        return f"the expression makes {value}, not {problem.target}"
    return None


@dataclass
class CountdownTask(Task):
    """Seeded Countdown problems and their strict verifier."""

    name = "countdown"
    num_numbers: int = 4  # numbers offered per problem (TinyZero uses 3 or 4)
    max_number: int = 50  # each number is drawn from 1..max_number
    max_target: int = 100  # targets lie in 1..max_target
    min_used: int = 2  # fewest numbers the reference solution combines

    def __post_init__(self) -> None:
        check_int("num_numbers", self.num_numbers, 2, 6)
        check_int("max_number", self.max_number, 2, 1000)
        check_int("max_target", self.max_target, 1, 10**6)
        check_int("min_used", self.min_used, 2, self.num_numbers)

    def sample(self, rng: random.Random) -> CountdownProblem:
        for _ in range(_SAMPLE_TRIES):
            numbers = tuple(rng.randint(1, self.max_number) for _ in range(self.num_numbers))
            k = rng.randint(self.min_used, self.num_numbers)
            pool = [(n, str(n), 0) for n in rng.sample(numbers, k)]  # (value, expression, precedence)
            steps = []
            while len(pool) > 1:
                (a, ea, pa), (b, eb, pb) = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
                if a < b:
                    (a, ea, pa), (b, eb, pb) = (b, eb, pb), (a, ea, pa)
                ops = ["+", "*"] + (["-"] if a > b else []) + (["/"] if b > 1 and a % b == 0 else [])
                op = rng.choice(ops)
                value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
                prec = 1 if op in "+-" else 2
                left = f"({ea})" if 0 < pa < prec else ea
                right = f"({eb})" if 0 < pb and (pb < prec or (pb == prec and op in "-/")) else eb
                steps.append(f"{a}{op}{b}={value}")
                pool.append((value, f"{left}{op}{right}", prec))
            target, expression, _ = pool[0]
            if 1 <= target <= self.max_target:
                return CountdownProblem(numbers, target, expression, ",".join(steps))
        raise ValueError(f"no target in 1..max_target={self.max_target} after {_SAMPLE_TRIES} tries: "
                         "raise max_target or lower max_number")

    def check_answer(self, problem: CountdownProblem, answer: str, plain: bool = False) -> bool:
        return check_solution(problem, answer) is None

    def reasoning(self, problem: CountdownProblem) -> str:
        return problem.steps

    def difficulty(self, problem: CountdownProblem) -> int:
        """Numbers the reference solution combines."""
        return len(parse_expression(problem.solution)[1])


__all__ = ["CountdownTask", "CountdownProblem", "ExpressionError", "parse_expression", "check_solution"]
