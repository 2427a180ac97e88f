"""A base with two skills, addition with worked steps and JSON tool calls, for lesson 11's RL costs.

R1 reports that its reasoning RL left other skills behind V3's: function calling,
JSON output (R1 §6). Lesson 11 measures that in miniature, and needs a model that
has both skills before RL. This recipe makes one, the same way for the lesson and
for ``experiments/rl_costs.py``:

- :func:`skill_tokenizer`: the course's character tokenizer plus the four characters
  JSON needs (``{ } " _``);
- :func:`skill_problems`: held-out and training problems of each skill, with no
  canonical key in both: lesson 10's 1-2 digit additions and lesson 08's ``toolcall``
  task restricted to four integer functions; with ``num_refusal_train``, a third skill,
  ``refusal`` (:mod:`mlakit.data.refusal`): forbidden requests worded like tool requests,
  answered by a fixed refusal (the safety experiment of ``experiments/rl_costs.py``);
- :func:`base_records`: the mixed SFT set, each problem once; an addition is written
  in R1's format with probability ``tagged_share`` (as lesson 10's base), else plain;
- :func:`train_base`: SFT (:func:`mlakit.recipes.sft`) of a fresh ``nano`` model on it;
- :func:`skill_accuracy`: the greedy accuracy of each skill on its held-out problems,
  an ``eval_fn`` for the GRPO trainer (:func:`mlakit.rl.skills_eval`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from torch import nn

from ..config import ModelConfig
from ..data import AdditionTask, Record, make_splits
from ..data.refusal import RefusalTask
from ..data.toolcall import ToolCallTask
from ..rl.multitask import skills_eval
from ..tokenizer import DEFAULT_ALPHABET, CharTokenizer
from ..train import TrainConfig
from .grpo import task_problems
from .sft import sft

JSON_CHARACTERS = '{}"_'  # what a JSON call needs beyond the course's alphabet
TOOL_FUNCTIONS = ("add", "subtract", "multiply", "set_timer")  # integer arguments only
CONTEXT = 96  # positions: the longest request (24 tokens with bos) and its call (60 with eos) fit
NEW_TOKENS = {"arithmetic": 24, "toolcall": 64, "refusal": 32}  # greedy budget per skill


def skill_tokenizer() -> CharTokenizer:
    """The course's tokenizer with ``{ } " _`` added (the specials keep their ids)."""
    return CharTokenizer(DEFAULT_ALPHABET + JSON_CHARACTERS)


def skill_config(tokenizer: CharTokenizer) -> ModelConfig:
    return ModelConfig.from_preset("nano", vocab_size=tokenizer.vocab_size, max_position_embeddings=CONTEXT)


@dataclass
class Skills:
    """Each skill's task, training and held-out problems."""

    tasks: dict = field(default_factory=dict)  # skill -> Task
    train: dict = field(default_factory=dict)  # skill -> problems
    held_out: dict = field(default_factory=dict)  # skill -> problems


def skill_problems(num_held_out: int = 200, num_tool_train: int = 4000, seed: int = 0,
                   num_refusal_train: int = 0) -> Skills:
    """Additions of 1-2 digit numbers (lesson 10's split: every fifth test problem held out) and tool calls
    (``num_tool_train`` training requests, ``num_held_out`` held out, no call in both); with
    ``num_refusal_train`` > 0, forbidden requests too (that many to train on, ``num_held_out`` held out,
    no request in both; the two skills' problems are the same as without)."""
    addition = AdditionTask(1, 2)
    splits = make_splits(addition.all_problems(), seed=seed)
    tools = ToolCallTask(max_value=99, functions=TOOL_FUNCTIONS)
    tool_train, tool_held = task_problems(tools, num_tool_train, num_held_out, seed=seed)
    skills = Skills(tasks={"arithmetic": addition, "toolcall": tools},
                    train={"arithmetic": splits["train"], "toolcall": tool_train},
                    held_out={"arithmetic": splits["test"][::5][:num_held_out], "toolcall": tool_held})
    if num_refusal_train:
        refusals = RefusalTask(max_value=99)
        train, held = task_problems(refusals, num_refusal_train, num_held_out, seed=seed)
        if len(train) < num_refusal_train:
            raise ValueError(f"num_refusal_train={num_refusal_train} is invalid: the refusal task has "
                             f"{len(train) + len(held)} distinct requests, {len(held)} of them held out")
        skills.tasks["refusal"], skills.train["refusal"], skills.held_out["refusal"] = refusals, train, held
    return skills


def base_records(skills: Skills, tagged_share: float = 0.1, seed: int = 0) -> list[Record]:
    """Every training problem of both skills once, shuffled; additions in R1's format with probability
    ``tagged_share``; tool calls are the bare JSON call."""
    rng = random.Random(f"two-skills-{seed}")
    out = []
    for skill, problems in skills.train.items():
        task = skills.tasks[skill]
        for i, p in enumerate(problems):
            tagged = skill == "arithmetic" and rng.random() < tagged_share
            out.append(Record(f"{skill}-{i}", skill, p.prompt, task.reference_completion(p, reasoning=tagged),
                              p.answer, problem=p))
    rng.shuffle(out)
    return out


def train_base(skills: Skills, tokenizer: CharTokenizer, steps: int = 400, lr: float = 3e-3, warmup_steps: int = 20,
               batch_size: int = 32, tagged_share: float = 0.1, seed: int = 0, desc: str = "base"):
    """SFT of a fresh ``nano`` model on :func:`base_records`; returns the :class:`~mlakit.recipes.sft.SFTRun`."""
    cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=warmup_steps, eval_every=0, seed=seed)
    return sft(skill_config(tokenizer), base_records(skills, tagged_share, seed), tokenizer, cfg,
               batch_size=batch_size, seed=seed, desc=desc)


def skill_accuracy(tokenizer: CharTokenizer, skills: Skills, prefix: str = "acc_") -> callable:
    """An ``eval_fn``: greedy accuracy of each skill on its held-out problems, as ``acc_<skill>``."""
    return skills_eval(tokenizer, skills.held_out, {s: t.verify for s, t in skills.tasks.items()},
                       max_new_tokens=NEW_TOKENS, prefix=prefix)


def evaluate_skills(model: nn.Module, tokenizer: CharTokenizer, skills: Skills) -> dict:
    return skill_accuracy(tokenizer, skills)(model)


__all__ = ["JSON_CHARACTERS", "TOOL_FUNCTIONS", "CONTEXT", "NEW_TOKENS", "Skills", "skill_tokenizer", "skill_config",
           "skill_problems", "base_records", "train_base", "skill_accuracy", "evaluate_skills"]
