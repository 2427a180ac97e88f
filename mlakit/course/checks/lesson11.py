"""Checkers for the exercises of lesson 11: what RL costs (a reward a model cannot hack, the costs of a run read
from its log, and the KL budget chosen from the trade-off).

The references are written here independently of the library and agree with it: the strict reward with
:meth:`mlakit.data.AdditionTask.verify` (R1's format read by :func:`mlakit.data.parse_completion`), the costs of
a run with :func:`mlakit.viz.rl_costs.tradeoff`. Each checker runs the learner's function on cases chosen so
that every typical mistake gives a different answer, and :func:`diagnose` names the one the learner's answer
equals.
"""

from __future__ import annotations

import math
import re

from ...utils import finite_float
from ._core import Answer, _Fail, checker, diagnose

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_R1 = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
_PLAIN = re.compile(r"(?:\[[^\[\]]*\])?(?P<answer>\d+)")  # optional worked steps, then the answer


# ---------------------------------------------------------------- 11.1
def _read(completion: str, *, kind: str = "strict") -> str | None:
    """The answer a reader takes from a completion: the strict one, or one typical lax reading."""
    if kind == "last_block":
        blocks = re.findall(r"<answer>(.*?)</answer>", completion, re.DOTALL)
        return blocks[-1].strip() if blocks else completion.strip()
    if kind == "last_number":
        numbers = re.findall(r"\d+", completion)
        return numbers[-1] if numbers else None
    if kind == "no_strip":
        m = _R1.fullmatch(completion)
        if m is not None:
            return m.group("answer")
        plain = _PLAIN.fullmatch(completion)
        return plain.group("answer") if plain else None
    m = _R1.fullmatch(completion)
    if m is not None:
        if any(t in m.group("think") + m.group("answer") for t in _TAGS):
            return None  # a tag inside a block: two answers in disguise
        return m.group("answer").strip() or None
    if any(t in completion for t in _TAGS):
        return None  # tags, but not exactly R1's layout
    plain = _PLAIN.fullmatch(completion.strip())
    return plain.group("answer") if plain else None


def _reward(answer: str, completion: str, *, kind: str = "strict") -> float:
    if kind == "substring":
        return 1.0 if answer in completion else 0.0
    if kind == "as_int":
        got = _read(completion)
        return 1.0 if got is not None and got.isdigit() and int(got) == int(answer) else 0.0
    got = _read(completion, kind=kind)
    return 1.0 if got == answer else 0.0


def reference_strict_reward(answer: str, completion: str) -> float:
    """1.0 when ``completion`` answers exactly ``answer``, read strictly, else 0.0.

    Accepted: R1's format, one think block then one answer block, whose answer (surrounding whitespace
    stripped) is ``answer``, with no tag inside either block and nothing outside them but whitespace; or the
    plain format, optional worked steps in one pair of brackets and then the digits of the answer. Anything
    else scores 0: two answer blocks, the answer inside a sentence, a list of numbers, "0132" for "132".
    """
    return _reward(answer, completion)


STRICT_CASES = [  # (answer, completion): every lax reading is wrong on at least one
    ("132", "132"),
    ("132", "[7+5=12,4+8+1=13]132"),
    ("132", "<think>7+5=12,4+8+1=13</think><answer>132</answer>"),
    ("132", "<think>x</think><answer> 132 </answer>"),
    ("132", "<think>x</think><answer>131</answer>"),
    ("132", "<answer>131</answer><answer>132</answer>"),  # a hedge: the last block is right
    ("132", "<think>131 or 132</think><answer>131</answer>"),  # the right number in the reasoning only
    ("132", "131 132"),  # a list of numbers
    ("132", "1132"),  # the right digits inside a wrong number
    ("132", "0132"),  # the right value, written otherwise
    ("132", "the answer is 132"),
    ("132", "<think>x</think><answer>132</answer> and 133"),  # text after the answer block
    ("132", "<think>x</think><answer>132</answer><answer>132</answer>"),
    ("7", "[0+7=7]7"),
    ("7", ""),
]

_STRICT_MISTAKES = [
    ("substring", "it accepts any completion in which the answer's digits occur (the sloppy verifier): "
                  "\"131 132\" and \"1132\" score 1, so a policy learns to list numbers. Hint: read ONE answer "
                  "out of the completion first, then compare it with `answer` exactly"),
    ("last_block", "it takes the last answer block (or the whole text), so a hedge "
                   "\"<answer>131</answer><answer>132</answer>\" scores 1. Hint: accept R1's format only as one "
                   "think block then one answer block, nothing else (re.fullmatch)"),
    ("last_number", "it takes the last number in the completion, so \"131 132\" and \"the answer is 132\" score "
                    "1. Hint: the plain format is optional worked steps in brackets, then the digits, and nothing "
                    "else: re.fullmatch(r\"(\\[[^\\[\\]]*\\])?(\\d+)\", completion)"),
    ("as_int", "it compares numbers, so \"0132\" passes for 132. Hint: compare the answer text with `answer` "
               "as strings: the verifier is exact"),
    ("no_strip", "it does not strip the whitespace around the answer inside the answer block. Hint: "
                 "\"<answer> 132 </answer>\" is a right answer: .strip() the block's text"),
]


def _same_float(a, b) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(float(a), float(b))


@checker("11.1", "strict_reward")
def check_strict_reward(strict_reward: Answer) -> str:
    """Exercise 11.1: strict_reward(answer, completion) -> 1.0 or 0.0, a reward a policy cannot hack."""
    got = []
    for answer, completion in STRICT_CASES:
        value = strict_reward(answer, completion)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Fail(f"return a float (1.0 or 0.0); for {completion!r} you return {type(value).__name__} "
                        f"{value!r}")
        got.append(float(value))
    want = [reference_strict_reward(a, c) for a, c in STRICT_CASES]
    if got == want:
        return (f"matches the reference on {len(STRICT_CASES)} completions: hedges, lists of numbers, numbers "
                "inside numbers and sentences all score 0")
    diagnose(got, [([_reward(a, c, kind=kind) for a, c in STRICT_CASES], hint) for kind, hint in _STRICT_MISTAKES],
             same=lambda a, b: a == b)
    i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
    answer, completion = STRICT_CASES[i]
    raise _Fail(f"answer {answer!r}, completion {completion!r}: you give {got[i]:g}, expected {want[i]:g}. Hint: "
                "R1's format is exactly <think>...</think><answer>...</answer> (one of each, no tag inside, nothing "
                "outside); the plain one is [steps]digits; compare the text read with `answer`")


# ---------------------------------------------------------------- 11.2

def _costs(rows, window, *, kind: str = "right") -> dict:
    def logged(key):
        return [finite_float(r.get(key)) for r in rows if finite_float(r.get(key)) is not None]

    out = {}
    for skill in ("arithmetic", "toolcall"):
        acc = logged(f"acc_{skill}")
        first, last = acc[0], acc[-1]
        if kind == "best":
            last = max(acc) if skill == "arithmetic" else min(acc)
        change = last - first
        if kind == "sign":
            change = -change
        out[f"{skill}_change"] = change
    kl = logged("kl")
    if kind == "kl_all":
        out["kl"] = sum(kl) / len(kl)
    elif kind == "kl_last":
        out["kl"] = kl[-1]
    else:
        part = kl[-window:]
        out["kl"] = sum(part) / len(part)
    return out


def reference_run_costs(rows: list, window: int) -> dict:
    """A run's costs from its log: ``{"arithmetic_change", "toolcall_change", "kl"}``.

    ``rows``: the trainer's history, one dict per step; ``acc_arithmetic`` / ``acc_toolcall`` appear only at the
    evaluation steps (missing or None elsewhere), ``kl`` at every step. A skill's change is its last evaluated
    accuracy minus its first (negative: forgotten); ``kl`` is the mean k3 over the last ``window`` steps that
    logged it.
    """
    return _costs(rows, window)


def _run_cases():
    def run(acc_a, acc_t, kl, eval_every):
        rows = []
        for step, k in enumerate(kl):
            row = {"step": step, "kl": k}
            if step % eval_every == 0 or step == len(kl) - 1:
                i = min(step // eval_every if step % eval_every == 0 else len(acc_a) - 1, len(acc_a) - 1)
                row["acc_arithmetic"], row["acc_toolcall"] = acc_a[i], acc_t[i]
            else:
                row["acc_arithmetic"] = None
            rows.append(row)
        return rows

    kl = [0.0, 0.01, 0.03, 0.05, 0.08, 0.06, 0.09, 0.12, 0.1, 0.11]
    return [
        (run([0.9, 0.97, 0.8, 0.95], [1.0, 0.6, 0.7, 0.4], kl, 3), 3),  # arithmetic peaks mid-run; tool calls dip
        (run([0.5, 0.6, 0.55], [0.9, 0.95, 0.92], [0.0, 0.2, 0.4, 0.3, 0.2, 0.1], 2), 4),
    ]


_COSTS_MISTAKES = [
    ("sign", "the changes have the wrong sign. Hint: a change is after minus before, so a forgotten skill has a "
             "negative change"),
    ("best", "the best (or worst) accuracy of the run is used instead of the last. Hint: the cost is where the "
             "run ENDS: the last evaluated accuracy minus the first"),
    ("kl_all", "k3 is averaged over every step. Hint: the KL a run ends at is the mean over its last `window` "
               "logged steps"),
    ("kl_last", "k3 is the last step's alone, which is noisy. Hint: average the last `window` logged values"),
]


def _same_costs(a, b) -> bool:
    return (isinstance(a, dict) and set(a) >= set(b)
            and all(finite_float(a[k]) is not None and math.isclose(float(a[k]), b[k], abs_tol=1e-9) for k in b))


@checker("11.2", "run_costs")
def check_run_costs(run_costs: Answer) -> str:
    """Exercise 11.2: run_costs(rows, window) -> {"arithmetic_change", "toolcall_change", "kl"}."""
    cases = _run_cases()
    got = []
    for rows, window in cases:
        value = run_costs([dict(r) for r in rows], window)
        if not isinstance(value, dict) or not {"arithmetic_change", "toolcall_change", "kl"} <= set(value):
            raise _Fail(f"return a dict with the keys 'arithmetic_change', 'toolcall_change' and 'kl'; got "
                        f"{str(value)[:120]}")
        got.append(value)
    want = [reference_run_costs(rows, window) for rows, window in cases]

    def same(a, b):
        return all(_same_costs(x, y) for x, y in zip(a, b, strict=True))

    if same(got, want):
        return f"matches the reference on {len(cases)} runs: last minus first, k3 over the last steps"
    diagnose(got, [([_costs(rows, w, kind=kind) for rows, w in cases], hint) for kind, hint in _COSTS_MISTAKES],
             same=same)
    i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if not _same_costs(g, w))
    shown = {k: round(finite_float(got[i][k]), 4) if finite_float(got[i][k]) is not None else got[i][k] for k in want[i]}
    raise _Fail(f"on a run of {len(cases[i][0])} steps (window {cases[i][1]}) you give {shown}, expected "
                f"{ {k: round(v, 4) for k, v in want[i].items()} }. Hint: skip the rows where a value is missing "
                "(None); change = last - first; kl = mean of the last `window` logged values")


# ---------------------------------------------------------------- 11.3
def _choose(costs, max_tool_loss, *, kind: str = "right"):
    best, best_gain = None, None
    for beta, c in costs.items():
        loss = -c["toolcall_change"]
        if kind == "strict" and loss >= max_tool_loss:
            continue
        if kind == "signed" and c["toolcall_change"] > max_tool_loss:
            continue
        if kind in ("right", "lowest_kl") and loss > max_tool_loss:
            continue
        score = -c["kl"] if kind == "lowest_kl" else c["arithmetic_change"]
        if best is None or score > best_gain:
            best, best_gain = beta, score
    if kind == "no_budget":
        return max(costs, key=lambda b: costs[b]["arithmetic_change"])
    return best


def reference_choose_beta(costs: dict, max_tool_loss: float):
    """The beta whose run gained the most arithmetic while losing at most ``max_tool_loss`` of tool-call
    accuracy (a loss equal to the budget is allowed); None when no run stays within the budget.

    ``costs``: beta -> ``{"arithmetic_change", "toolcall_change", "kl"}`` (exercise 11.2's output). Ties go to
    the first beta in the mapping's order.
    """
    return _choose(costs, max_tool_loss)


CHOOSE_CASES = [
    ({0.0: {"arithmetic_change": 0.06, "toolcall_change": -0.30, "kl": 0.15},
      0.04: {"arithmetic_change": 0.04, "toolcall_change": -0.10, "kl": 0.05},
      0.2: {"arithmetic_change": 0.01, "toolcall_change": -0.02, "kl": 0.01}}, 0.10),  # the budget is met exactly
    ({0.0: {"arithmetic_change": 0.06, "toolcall_change": -0.30, "kl": 0.15},
      0.04: {"arithmetic_change": 0.04, "toolcall_change": -0.10, "kl": 0.05},
      0.2: {"arithmetic_change": 0.01, "toolcall_change": -0.02, "kl": 0.01}}, 0.5),  # everything fits
    ({0.0: {"arithmetic_change": 0.06, "toolcall_change": -0.30, "kl": 0.15},
      0.04: {"arithmetic_change": 0.04, "toolcall_change": -0.10, "kl": 0.05}}, 0.05),  # nothing fits: None
    ({0.0: {"arithmetic_change": 0.02, "toolcall_change": 0.01, "kl": 0.2},
      0.1: {"arithmetic_change": 0.03, "toolcall_change": -0.04, "kl": 0.02},
      1.0: {"arithmetic_change": -0.01, "toolcall_change": 0.0, "kl": 0.001}}, 0.03),
    ({0.0: {"arithmetic_change": 0.05, "toolcall_change": 0.2, "kl": 0.3},
      0.1: {"arithmetic_change": 0.02, "toolcall_change": -0.01, "kl": 0.05}}, 0.05),  # a gain in tool calls is fine
]

_CHOOSE_MISTAKES = [
    ("no_budget", "the budget is ignored: the largest arithmetic gain wins whatever it costs. Hint: skip the "
                  "runs whose tool-call loss (minus toolcall_change) is above max_tool_loss"),
    ("strict", "a run that loses exactly max_tool_loss is refused. Hint: the budget allows a loss up to and "
               "including max_tool_loss (<=)"),
    ("signed", "toolcall_change is compared with the budget without its sign. Hint: the loss is "
               "-toolcall_change (a change of -0.3 is a loss of 0.3)"),
    ("lowest_kl", "the run with the smallest KL is chosen. Hint: among the runs within the budget, take the one "
                  "whose arithmetic gained the most"),
]


@checker("11.3", "choose_beta")
def check_choose_beta(choose_beta: Answer) -> str:
    """Exercise 11.3: choose_beta(costs, max_tool_loss) -> the beta to use, or None."""
    got = [choose_beta({b: dict(c) for b, c in costs.items()}, budget) for costs, budget in CHOOSE_CASES]
    want = [reference_choose_beta(costs, budget) for costs, budget in CHOOSE_CASES]

    def same(a, b):
        return all(x == y and (x is None) == (y is None) for x, y in zip(a, b, strict=True))

    if same(got, want):
        return (f"matches the reference on {len(CHOOSE_CASES)} trade-offs, the budget's edge and an empty choice "
                "included")
    diagnose(got, [([_choose(c, b, kind=kind) for c, b in CHOOSE_CASES], hint) for kind, hint in _CHOOSE_MISTAKES],
             same=same)
    i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if not same([g], [w]))
    costs, budget = CHOOSE_CASES[i]
    raise _Fail(f"with betas {list(costs)} and max_tool_loss {budget} you choose {got[i]!r}, expected {want[i]!r}. "
                "Hint: keep the betas with -toolcall_change <= max_tool_loss; of those, the largest "
                "arithmetic_change; None when none is left")


__all__ = ["reference_strict_reward", "check_strict_reward", "reference_run_costs", "check_run_costs",
           "reference_choose_beta", "check_choose_beta"]
