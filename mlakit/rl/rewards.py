"""Rule rewards with TRL's signature: accuracy, R1's format, DAPO's overlong penalty, a weighted sum.

A reward function takes the batch as keyword lists and returns one float per
completion, exactly as TRL's ``GRPOTrainer`` calls its reward functions:

    reward(prompts=[...], completions=[...], completion_ids=[[...], ...], **fields) -> list[float]

``fields`` are the prompt's other columns, repeated for each of its G completions
(prompt-major): for a task's problems, ``problem`` (the problem object) and
``answer`` (its reference answer). TRL adds ``trainer_state`` and logging hooks;
take ``**kwargs`` and ignore what you do not use. A function's ``__name__`` names its
metrics (``reward_accuracy``, ``reward_format``).

R1-Zero's rewards (R1 §2.2.2) are rules, not models, so they cannot be
reward-hacked by a policy that learns to please a reward network:

- :func:`accuracy_reward`: 1 if the task's strict verifier accepts the completion
  (:meth:`mlakit.data.Task.verify`), else 0;
- :func:`format_reward`: 1 if the completion is ``<think>...</think><answer>...</answer>``
  and nothing else (:func:`mlakit.data.format_ok`), else 0;
- :func:`overlong_penalty`: DAPO's soft overlong punishment (arXiv 2503.14476 §3.4,
  TRL's ``get_soft_overlong_punishment``): 0 up to L_max - L_cache tokens, then
  linear down to -1 at L_max;
- :func:`weighted_sum`: one function of several.

:func:`compute_rewards` calls them for a batch and refuses a function that
returns the wrong number of values, a non-number or a NaN, naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..data.reasoning import format_ok

RewardFunc = Callable[..., list[float]]
ACCURACY = "accuracy"  # the name the trainer reads to split completion lengths into correct and incorrect


def reward_name(func: RewardFunc) -> str:
    """The name of a reward function in metrics: its ``__name__`` (TRL's convention)."""
    return getattr(func, "__name__", None) or type(func).__name__


def format_reward(prompts: Sequence[str], completions: Sequence[str], **kwargs) -> list[float]:
    """R1's format reward: 1.0 for ``<think>...</think><answer>...</answer>`` and nothing else, else 0.0."""
    return [1.0 if format_ok(c) else 0.0 for c in completions]


format_reward.__name__ = "format"


def accuracy_reward(task) -> RewardFunc:
    """R1's accuracy reward for ``task``: 1.0 if ``task.verify(problem, completion)``, else 0.0.

    Reads the ``problem`` field (the problems' objects, one per completion); the
    verifier is strict (:mod:`mlakit.data.reasoning`), so a hedge with two answers
    or an answer buried in a sentence scores 0.
    """

    def accuracy(prompts: Sequence[str], completions: Sequence[str], problem: Sequence | None = None,
                 **kwargs) -> list[float]:
        if problem is None:
            raise ValueError("the accuracy reward needs the problems (a `problem` field): give the trainer the "
                             "task's problems as prompts, not bare strings")
        return [1.0 if task.verify(p, c) else 0.0 for p, c in zip(problem, completions, strict=True)]

    accuracy.__name__ = ACCURACY
    return accuracy


def overlong_penalty(max_completion_length: int, soft_punish_cache: int) -> RewardFunc:
    """DAPO's soft overlong punishment (eq. 13) of a completion of |y| tokens (eos included):
    0 for |y| <= L_max - L_cache, ((L_max - L_cache) - |y|) / L_cache up to L_max, -1 beyond.

    L_max = ``max_completion_length``, L_cache = ``soft_punish_cache`` (> 0). Reads ``completion_ids``.
    """
    if not 0 < soft_punish_cache <= max_completion_length:
        raise ValueError(f"soft_punish_cache={soft_punish_cache} is invalid: must be in [1, max_completion_length="
                         f"{max_completion_length}]")
    free = max_completion_length - soft_punish_cache  # L_max - L_cache: lengths up to here cost nothing

    def overlong(prompts: Sequence[str], completions: Sequence[str], completion_ids: Sequence[Sequence[int]],
                 **kwargs) -> list[float]:
        out = []
        for ids in completion_ids:
            n = len(ids)
            out.append(0.0 if n <= free else -1.0 if n > max_completion_length else (free - n) / soft_punish_cache)
        return out

    overlong.__name__ = "overlong"
    return overlong


def weighted_sum(funcs: Sequence[RewardFunc], weights: Sequence[float] | None = None,
                 name: str = "weighted_sum") -> RewardFunc:
    """One reward function returning sum_k w_k f_k(...) (weights default to 1), each part checked."""
    funcs = list(funcs)
    weights = [1.0] * len(funcs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(funcs):
        raise ValueError(f"{len(weights)} weights for {len(funcs)} reward functions: give one weight per function")

    def combined(prompts: Sequence[str], completions: Sequence[str], **kwargs) -> list[float]:
        _, total = compute_rewards(funcs, prompts, completions, weights, **kwargs)
        return total.tolist()

    combined.__name__ = name
    return combined


def call_reward(func: RewardFunc, prompts: Sequence[str], completions: Sequence[str], **fields) -> list[float]:
    """``func``'s rewards for the batch, checked: one finite number per completion (no NaN, no inf)."""
    name = reward_name(func)
    out = func(prompts=list(prompts), completions=list(completions), **fields)
    if isinstance(out, torch.Tensor):
        out = out.tolist()
    try:
        values = [float(v) for v in out]
    except (TypeError, ValueError):
        raise ValueError(f"reward function {name!r} must return a list of numbers, one per completion; it returned "
                         f"{type(out).__name__} {str(out)[:80]}") from None
    if len(values) != len(completions):
        raise ValueError(f"reward function {name!r} returned {len(values)} values for {len(completions)} "
                         "completions: it must return one reward per completion")
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"reward function {name!r} returned {values[bad]} for completion {bad} "
                         f"({completions[bad]!r}): return a finite number for every completion (0.0 for one it "
                         "cannot score)")
    return values


def compute_rewards(funcs: Sequence[RewardFunc], prompts: Sequence[str], completions: Sequence[str],
                    weights: Sequence[float] | None = None, **fields) -> tuple[torch.Tensor, torch.Tensor]:
    """Every function's rewards (N, F) and their weighted sum (N,), float32 (weights default to 1)."""
    funcs = list(funcs)
    if not funcs:
        raise ValueError("no reward functions: GRPO needs at least one")
    weights = [1.0] * len(funcs) if weights is None else list(weights)
    if len(weights) != len(funcs):
        raise ValueError(f"{len(weights)} reward weights for {len(funcs)} reward functions: give one per function")
    per_func = torch.tensor([call_reward(f, prompts, completions, **fields) for f in funcs],
                            dtype=torch.float32).T.reshape(len(completions), len(funcs))  # (N, F)
    total = (per_func * torch.tensor(weights, dtype=torch.float32)).sum(-1)  # (N,)
    return per_func, total


__all__ = ["RewardFunc", "ACCURACY", "reward_name", "format_reward", "accuracy_reward", "overlong_penalty",
           "weighted_sum", "call_reward", "compute_rewards"]
