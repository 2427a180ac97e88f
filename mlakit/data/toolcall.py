"""Tool calls: a request in words answered by one JSON function call from a small catalogue.

"add 37 and 45" is answered by ``{"name": "add", "arguments": {"a": 37, "b": 45}}``.
This is the second skill of lesson 11 (R1 trails V3 at function calling and JSON
output, R1 §6): a format a model can forget while RL sharpens its arithmetic.

The verifier parses the completion as JSON (``json.loads``, never ``eval``) and
checks it exactly: one object with the keys ``name`` and ``arguments`` and no
others; the function's name; the argument names, no more and no fewer; each
value of the right JSON type (37, not 37.0, "37" or true) and value. Duplicate
keys, NaN and Infinity are refused by the parser.

Each function has several wordings; the key of a problem is the call itself,
so "add 37 and 45" and "what is 37 plus 45" share it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from .task import Task, check_int


@dataclass(frozen=True)
class Function:
    name: str
    parameters: tuple[tuple[str, type], ...]  # (argument name, JSON type as a Python type), in order
    templates: tuple[str, ...]  # wordings of a request; fields are the argument names


UNITS = {"length": ("km", "m", "cm"), "mass": ("kg", "g")}  # convert's string arguments, by quantity

CATALOGUE: dict[str, Function] = {f.name: f for f in (
    Function("add", (("a", int), ("b", int)),
             ("add {a} and {b}", "what is {a} plus {b}?", "sum {a} and {b}")),
    Function("subtract", (("a", int), ("b", int)),
             ("subtract {b} from {a}", "what is {a} minus {b}?", "take {b} away from {a}")),
    Function("multiply", (("a", int), ("b", int)),
             ("multiply {a} by {b}", "what is {a} times {b}?")),
    Function("set_timer", (("minutes", int),),
             ("set a timer for {minutes} minutes", "remind me in {minutes} minutes")),
    Function("convert", (("value", int), ("from_unit", str), ("to_unit", str)),
             ("convert {value} {from_unit} to {to_unit}", "how many {to_unit} is {value} {from_unit}?")),
)}


@dataclass(frozen=True)
class ToolCallProblem:
    name: str
    args: tuple[tuple[str, Any], ...]  # the reference arguments, in the function's order (hashable)
    template: int = 0  # which wording of the request

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.args)

    @property
    def prompt(self) -> str:
        return CATALOGUE[self.name].templates[self.template].format(**self.arguments) + "\n"

    @property
    def answer(self) -> str:
        return json.dumps({"name": self.name, "arguments": self.arguments})

    @property
    def key(self) -> tuple:
        return ("call", self.name, self.args)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def parse_call(text: str) -> dict | None:
    """The JSON object of a call, or None when the text is not one strict JSON object."""
    try:
        call = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return None
    return call if isinstance(call, dict) else None


def check_call(problem: ToolCallProblem, text: str) -> str | None:
    """None when ``text`` is exactly the reference call, else the reason it is not."""
    call = parse_call(text)
    if call is None:
        return "not a JSON object"
    if set(call) != {"name", "arguments"}:
        return f"keys {sorted(call)}; expected ['arguments', 'name']"
    if call["name"] != problem.name:
        return f"function {call['name']!r}; expected {problem.name!r}"
    args = call["arguments"]
    if not isinstance(args, dict):
        return "arguments is not an object"
    expected = problem.arguments
    if set(args) != set(expected):
        return f"arguments {sorted(args)}; expected {sorted(expected)}"
    for name, typ in CATALOGUE[problem.name].parameters:
        if type(args[name]) is not typ:  # exact: true is not 1, 37.0 is not 37
            return f"argument {name!r} is a {type(args[name]).__name__}; expected {typ.__name__}"
        if args[name] != expected[name]:
            return f"argument {name!r} is {args[name]!r}; expected {expected[name]!r}"
    return None


@dataclass
class ToolCallTask(Task):
    """Seeded requests in words and the strict verifier of their JSON call."""

    name = "toolcall"
    max_value: int = 100  # integer arguments are drawn from 1..max_value
    functions: tuple[str, ...] = tuple(CATALOGUE)  # which functions of the catalogue to ask for

    def __post_init__(self) -> None:
        check_int("max_value", self.max_value, 1, 10**9)
        if isinstance(self.functions, str):
            self.functions = tuple(f.strip() for f in self.functions.split(",") if f.strip())
        self.functions = tuple(self.functions)
        unknown = [f for f in self.functions if f not in CATALOGUE]
        if not self.functions or unknown or len(set(self.functions)) != len(self.functions):
            raise ValueError(f"functions={self.functions!r} is invalid: must be distinct names from "
                             f"{', '.join(CATALOGUE)} (at least one)")

    def sample(self, rng: random.Random) -> ToolCallProblem:
        fn = CATALOGUE[rng.choice(self.functions)]
        args: list[tuple[str, Any]] = []
        quantity = rng.choice(sorted(UNITS))
        units = list(UNITS[quantity])
        for arg, typ in fn.parameters:
            if typ is int:
                args.append((arg, rng.randint(1, self.max_value)))
            else:  # a unit: from_unit and to_unit differ and measure the same quantity
                args.append((arg, units.pop(rng.randrange(len(units)))))
        return ToolCallProblem(fn.name, tuple(args), rng.randrange(len(fn.templates)))

    def check_answer(self, problem: ToolCallProblem, answer: str, plain: bool = False) -> bool:
        return check_call(problem, answer) is None

    def reasoning(self, problem: ToolCallProblem) -> str:
        return f"the request asks for {problem.name}"

    def difficulty(self, problem: ToolCallProblem) -> int:
        """Arguments of the call."""
        return len(problem.args)


__all__ = ["CATALOGUE", "Function", "ToolCallProblem", "ToolCallTask", "check_call", "parse_call"]
