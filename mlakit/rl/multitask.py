"""Several skills in one GRPO run: rewards per task in a mixed prompt set, evaluation of every skill.

R1's last RL stage ran "over all scenarios" (R1 §2.3.4): reasoning prompts scored by
rules, general prompts by other rewards, in one run. The trainer needs no fork for
that, only two pieces with its existing interfaces:

- :func:`mixed_prompts`: prompts of several tasks in one list, each a dict with the
  ``prompt``, its ``problem``, ``answer`` and ``task`` name; the trainer hands those
  fields to the reward functions, one value per completion;
- :func:`per_task_reward`: one reward function that routes each completion to its
  task's reward by the ``task`` field (a task without a reward scores ``default``, or
  raises when ``default`` is None);
- :func:`skills_eval` and :func:`combine_evals`: an ``eval_fn`` that reports the
  held-out greedy accuracy of each skill (``acc_arithmetic``, ``acc_toolcall``) at
  every ``eval_steps``, so forgetting shows in the trainer's history.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from .rewards import RewardFunc, call_reward
from .trainer import held_out_accuracy

TASK_FIELD = "task"


def mixed_prompts(problems: Mapping[str, Sequence], seed: int = 0) -> list[dict]:
    """Prompts of several tasks shuffled together: ``{"prompt", "problem", "answer", "task"}`` per problem.

    ``problems``: task name -> its problems (each with ``.prompt``; ``.answer`` when it has one).
    """
    if not problems:
        raise ValueError("mixed_prompts needs at least one task")
    out = []
    for name, items in problems.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"task names must be non-empty strings; got {name!r}")
        for p in items:
            row = {"prompt": p.prompt, "problem": p, TASK_FIELD: name}
            if hasattr(p, "answer"):
                row["answer"] = p.answer
            out.append(row)
    if not out:
        raise ValueError("mixed_prompts got no problems")
    random.Random(f"mixed-{seed}").shuffle(out)
    return out


def per_task_reward(rewards: Mapping[str, RewardFunc], name: str = "accuracy",
                    default: float | None = None) -> RewardFunc:
    """One reward function: completion i is scored by ``rewards[task[i]]`` (TRL's signature; reads ``task``).

    Each task's function is called once per batch on its own rows, with every field sliced to those
    rows. A task with no entry scores ``default``; with ``default=None`` it raises a ValueError naming it.
    The returned function is named ``name`` (``"accuracy"``: the trainer then splits completion lengths
    into correct and incorrect).
    """
    funcs = dict(rewards)
    if not funcs or not all(callable(f) for f in funcs.values()):
        raise ValueError("per_task_reward needs a mapping of task name -> reward function")

    def reward(prompts: Sequence[str], completions: Sequence[str], **fields) -> list[float]:
        tasks = fields.get(TASK_FIELD)
        if tasks is None:
            raise ValueError(f"a per-task reward needs a {TASK_FIELD!r} field per prompt: build the prompts "
                             "with mlakit.rl.mixed_prompts")
        if len(tasks) != len(completions):
            raise ValueError(f"{len(tasks)} task names for {len(completions)} completions")
        out: list[float | None] = [None] * len(completions)
        for task in dict.fromkeys(tasks):  # each task once, in order of appearance
            rows = [i for i, t in enumerate(tasks) if t == task]
            if task not in funcs:
                if default is None:
                    raise ValueError(f"no reward for task {task!r}: give one (tasks with rewards: "
                                     f"{', '.join(map(repr, funcs))}) or a default")
                for i in rows:
                    out[i] = float(default)
                continue
            sliced = {k: [v[i] for i in rows] if isinstance(v, (list, tuple)) and len(v) == len(completions) else v
                      for k, v in fields.items()}
            values = call_reward(funcs[task], [prompts[i] for i in rows], [completions[i] for i in rows], **sliced)
            for i, v in zip(rows, values, strict=True):
                out[i] = v
        return out

    reward.__name__ = name
    return reward


def combine_evals(*eval_fns: Callable[[nn.Module], dict]) -> Callable[[nn.Module], dict]:
    """One ``eval_fn`` running each of ``eval_fns`` in turn and merging their numbers (names must differ)."""
    if not eval_fns or not all(callable(f) for f in eval_fns):
        raise ValueError("combine_evals needs at least one eval_fn")

    def evaluate(model: nn.Module) -> dict:
        merged: dict = {}
        for fn in eval_fns:
            result = fn(model)
            clash = sorted(set(result) & set(merged))
            if clash:
                raise ValueError(f"two eval_fns report {clash[0]!r}: give them different names")
            merged.update(result)
        return merged

    return evaluate


def skills_eval(tokenizer, problems: Mapping[str, Sequence], verifiers: Mapping[str, Callable],
                max_new_tokens: int | Mapping[str, int] = 32, prefix: str = "acc_") -> Callable[[nn.Module], dict]:
    """An ``eval_fn``: the held-out greedy accuracy of each skill, reported as ``<prefix><skill>``.

    ``problems`` and ``verifiers``: skill -> held-out problems, skill -> ``verify(problem, completion)``;
    ``max_new_tokens``: one budget, or one per skill.
    """
    missing = sorted(set(problems) ^ set(verifiers))
    if missing:
        raise ValueError(f"skill {missing[0]!r} needs both problems and a verifier")
    fns = []
    for skill, items in problems.items():
        budget = max_new_tokens[skill] if isinstance(max_new_tokens, Mapping) else max_new_tokens
        fns.append(held_out_accuracy(tokenizer, items, verifiers[skill], budget, name=f"{prefix}{skill}"))
    return combine_evals(*fns)


__all__ = ["TASK_FIELD", "mixed_prompts", "per_task_reward", "combine_evals", "skills_eval"]
