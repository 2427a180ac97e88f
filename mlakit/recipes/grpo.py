"""GRPO on a synthetic task with rule rewards: R1-Zero's recipe in miniature (R1 §2.2).

The recipe of lesson 10 and ``mlakit grpo``:

1. a base model (a model in memory, or a checkpoint folder written by ``mlakit
   train`` or by SFT, with its ``tokenizer.json``);
2. prompts from a task of :mod:`mlakit.data` (``get_task(name, **knobs)``): held-out
   problems first, then training problems whose canonical keys differ from every
   held-out one (no problem, nor its mirror, is trained on and evaluated);
3. R1-Zero's rule rewards, accuracy (the task's strict verifier) and format
   (``<think>...</think><answer>...</answer>``), weighted by ``reward_weights``
   (:mod:`mlakit.rl.rewards`);
4. :class:`~mlakit.rl.GRPOTrainer` with the :class:`~mlakit.rl.GRPOConfig`: rollouts
   on the latent cache, group advantages, the clipped objective, the shared
   Trainer's AdamW, schedule, clipping, bias update, checkpoints and metrics;
5. held-out greedy accuracy before training, every ``eval_steps`` and at the end.

DeepSeek-R1-Zero ran this on V3-Base with G = 16, 512 prompts per step, beta 0.001
and 10,400 steps; a nano model on a CPU runs a few hundred steps of a few prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..data import Task, get_task
from ..rl import (
    GRPOConfig,
    GRPOTrainer,
    RewardFunc,
    accuracy_reward,
    format_reward,
    held_out_accuracy,
)
from ..tokenizer import CharTokenizer
from ..train import load_model_from_checkpoint

GRPO_PROMPTS = 1000  # training problems drawn from the task (fewer when the task has fewer distinct keys)
GRPO_EVAL_PROBLEMS = 100  # held-out problems for the greedy accuracy
DRAWS_PER_PROBLEM = 20  # give up after this many draws per wanted problem (small tasks run out of keys)


@dataclass
class GRPORun:
    """What :func:`grpo` built and trained."""

    trainer: GRPOTrainer
    tokenizer: CharTokenizer
    task: Task
    train_problems: list = field(repr=False)
    eval_problems: list = field(repr=False)

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    @property
    def history(self) -> list[dict]:
        return self.trainer.history


def task_problems(task: Task, num_train: int, num_eval: int, seed: int = 0) -> tuple[list, list]:
    """(train, held-out) problems of ``task`` with distinct canonical keys, none shared between the two.

    Problems are drawn in order from ``task.generate(..., seed)``; the first ``num_eval`` new keys are
    held out, the next ``num_train`` train. A task with fewer keys gives fewer problems.
    """
    seen: set = set()
    held_out: list = []
    train: list = []
    for p in task.generate(DRAWS_PER_PROBLEM * (num_train + num_eval), seed=seed):
        if p.key in seen:
            continue
        seen.add(p.key)
        (held_out if len(held_out) < num_eval else train).append(p)
        if len(train) >= num_train:
            break
    return train, held_out


def _load(model: nn.Module | str | Path, tokenizer: CharTokenizer | None) -> tuple[nn.Module, CharTokenizer]:
    if isinstance(model, (str, Path)):
        folder = Path(model)
        loaded = load_model_from_checkpoint(folder)
        if tokenizer is None:
            tokenizer = CharTokenizer.load(folder / "tokenizer.json")
        return loaded, tokenizer
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a model or a checkpoint folder, got {type(model).__name__}")
    return model, tokenizer or CharTokenizer()


def grpo(model: nn.Module | str | Path, task: Task | str, config: GRPOConfig, tokenizer: CharTokenizer | None = None,
         reward_funcs: Sequence[RewardFunc] | None = None, num_prompts: int = GRPO_PROMPTS,
         num_eval: int = GRPO_EVAL_PROBLEMS, seed: int = 0, ref_model: nn.Module | None = None,
         steps: int | None = None, resume_from: str | Path | None = None, desc: str = "GRPO") -> GRPORun:
    """GRPO on ``task`` from ``model`` (trained in place); returns the :class:`GRPORun`.

    ``model``: a model, or a checkpoint folder (its ``tokenizer.json`` is used unless
    ``tokenizer`` is given). ``task``: a Task or a task name. ``reward_funcs`` default to
    [accuracy, format] (weights: ``config.reward_weights``, else 1 each). ``steps`` stops
    early at that step of ``config.max_steps``; ``resume_from`` continues from a
    ``run.trainer.save`` folder exactly as an uninterrupted run would (build from the same
    base model: it is the KL reference when beta > 0).
    """
    model, tokenizer = _load(model, tokenizer)
    task = get_task(task) if isinstance(task, str) else task
    train, held_out = task_problems(task, num_prompts, num_eval, seed)
    funcs = list(reward_funcs) if reward_funcs is not None else [accuracy_reward(task), format_reward]
    eval_fn = held_out_accuracy(tokenizer, held_out, task.verify, config.max_completion_length) if held_out else None
    trainer = GRPOTrainer(model, tokenizer, funcs, train, config, ref_model=ref_model, eval_fn=eval_fn)
    if resume_from is not None:
        trainer.load(resume_from)
    elif eval_fn is not None:
        trainer.evaluate()  # step 0: the base model's held-out accuracy
    trainer.train(steps=steps, desc=desc)
    return GRPORun(trainer, tokenizer, task, train, held_out)


__all__ = ["GRPO_PROMPTS", "GRPO_EVAL_PROBLEMS", "GRPORun", "task_problems", "grpo"]
