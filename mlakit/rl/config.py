"""GRPOConfig: every knob of a GRPO run in one validated dataclass, named as TRL names them.

Field names follow TRL's ``GRPOConfig`` (1.16) wherever the concept exists, so a
learner who leaves this course for TRL keeps the vocabulary: ``num_generations``,
``temperature``, ``max_completion_length``, ``beta``, ``epsilon``, ``epsilon_high``,
``num_iterations``, ``loss_type``, ``scale_rewards``, ``mask_truncated_completions``,
``reward_weights``, ``learning_rate``, ``max_steps``, ``warmup_steps``,
``weight_decay``, ``adam_beta1``, ``adam_beta2``, ``max_grad_norm``, ``eval_steps``,
``seed``. The objective's knobs follow the papers:

- GRPO (DeepSeekMath §4.1, arXiv 2402.03300): G samples per prompt, group-relative
  advantages, PPO's clipped ratio, a k3 KL penalty against a frozen reference
  weighted by ``beta`` (DeepSeekMath 0.04; R1-Zero 0.001);
- DAPO (arXiv 2503.14476): clip-higher (``epsilon_high`` 0.28 over ``epsilon`` 0.2),
  dynamic sampling (``dynamic_sampling``: drop groups whose rewards are all equal),
  token-level loss (``loss_type="dapo"``), soft overlong punishment
  (``soft_punish_cache`` = L_cache, TRL's ``get_soft_overlong_punishment``), no KL;
- Dr. GRPO (arXiv 2503.20783): ``loss_type="dr_grpo"`` (a constant denominator,
  no 1/|o_i|) and ``scale_rewards="none"`` (no division by the group's std).

Defaults are TRL's except where a CPU course needs otherwise, each said beside
its field. Three fields are mlakit's own: ``prompts_per_step`` (TRL counts
completions instead: its ``per_device_train_batch_size`` is prompts_per_step x
num_generations with one optimizer step per generation), ``min_lr_ratio`` and
``bias_update_gamma`` (the :class:`~mlakit.train.Trainer`'s schedule floor and
DeepSeek-V3's aux-loss-free balancing, which TRL does not do).

A wrong value raises a ValueError naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..train import TrainConfig

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")  # how per-token losses are averaged (see loss.py)
SCALE_REWARDS = ("group", "batch", "none")  # what the centred reward is divided by (see advantages.py)


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"GRPOConfig.{name}={value!r} is invalid: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class GRPOConfig:
    """The knobs of a GRPO run; see the module docstring for the papers and TRL's names."""

    # --- rollouts -----------------------------------------------------------------
    num_generations: int = 8  # G: completions per prompt, one group (TRL 8; DeepSeekMath 64, R1-Zero 16)
    prompts_per_step: int = 8  # prompts per step: the batch is prompts_per_step x G completions
    temperature: float = 1.0  # sampling temperature; log-probs are those of this distribution (TRL 1.0)
    max_completion_length: int = 32  # L_max: new tokens per completion (TRL 512; our answers are short)

    # --- objective ------------------------------------------------------------------
    beta: float = 0.0  # weight of the k3 KL to the frozen reference (TRL 0.0, DeepSeekMath 0.04); 0: no reference
    epsilon: float = 0.2  # clip the ratio below at 1 - epsilon (PPO's 0.2; R1-Zero used 10, i.e. no clip)
    epsilon_high: float | None = None  # clip above at 1 + epsilon_high; None: = epsilon (DAPO: 0.28)
    num_iterations: int = 1  # mu: optimizer passes over each batch of rollouts (DeepSeekMath: 1)
    loss_type: str = "dapo"  # "grpo" (per-sequence mean), "bnpo"/"dapo" (per token), "dr_grpo" (constant)
    scale_rewards: str = "group"  # divide by the std of the "group", the "batch", or "none" (Dr. GRPO)
    mask_truncated_completions: bool = False  # leave completions that hit L_max without eos out of the loss (DAPO)

    # --- rewards ----------------------------------------------------------------------
    reward_weights: list[float] | None = None  # one weight per reward function; None: all 1 (TRL)
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal (they carry no gradient)
    soft_punish_cache: int = 0  # DAPO's L_cache: penalty 0 up to L_max - L_cache, linear to -1 at L_max; 0 = off

    # --- optimisation (the Trainer's AdamW, schedule, clipping) --------------------------
    max_steps: int = 100  # GRPO steps: one batch of rollouts and num_iterations optimizer updates each
    learning_rate: float = 1e-4  # AdamW peak lr (TRL 1e-6 is for billion-parameter models; nano needs more)
    warmup_steps: int = 0  # linear warmup steps (TRL 0)
    min_lr_ratio: float = 1.0  # cosine floor as a share of lr; 1 = constant after warmup (R1: constant lr)
    weight_decay: float = 0.0  # AdamW decoupled weight decay (TRL 0.0): with zero advantages nothing moves
    adam_beta1: float = 0.9  # AdamW beta1 (TRL 0.9)
    adam_beta2: float = 0.999  # AdamW beta2 (TRL 0.999)
    max_grad_norm: float = 1.0  # global gradient-norm clip (TRL 1.0)
    bias_update_gamma: float = 0.001  # aux-loss-free balancing speed of MoE layers (V3: 0.001); 0 = off
    eval_steps: int = 0  # steps between held-out greedy evaluations (0: only at the end)
    seed: int = 0  # seeds torch before the first rollout; prompt order is a function of (seed, step)

    def __post_init__(self) -> None:
        if isinstance(self.reward_weights, tuple):
            self.reward_weights = list(self.reward_weights)
        self.validate()

    @property
    def epsilon_low(self) -> float:
        """The lower clip distance (TRL's name for ``epsilon`` inside the trainer)."""
        return self.epsilon

    @property
    def clip_high(self) -> float:
        """The upper clip distance: ``epsilon_high``, or ``epsilon`` when it is None."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    def validate(self) -> None:
        """Raise ValueError naming the first field that is wrong."""
        at_least = {"num_generations": 2, "prompts_per_step": 1, "max_completion_length": 1, "num_iterations": 1,
                    "max_steps": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                why = " (a group needs two samples for a standard deviation)" if name == "num_generations" else ""
                _fail(name, value, f"must be an integer >= {low}{why}")
        for name in ("warmup_steps", "eval_steps", "seed"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                _fail(name, value, "must be an integer >= 0")
        cache = self.soft_punish_cache
        if not _is_int(cache) or not 0 <= cache < self.max_completion_length:
            _fail("soft_punish_cache", cache, f"must be an integer in [0, max_completion_length="
                                              f"{self.max_completion_length}) (0 turns the overlong penalty off)")
        for name in ("temperature", "epsilon", "learning_rate", "max_grad_norm"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                why = " (GRPO samples; greedy decoding has no log-probs)" if name == "temperature" else ""
                _fail(name, value, f"must be a finite number > 0{why}")
        if self.epsilon_high is not None and (not _is_number(self.epsilon_high) or self.epsilon_high <= 0):
            _fail("epsilon_high", self.epsilon_high, "must be a finite number > 0, or None (= epsilon)")
        for name in ("beta", "weight_decay", "bias_update_gamma"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                _fail(name, value, "must be a finite number >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                _fail(name, value, "must be a number in [0, 1)")
        if not _is_number(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            _fail("min_lr_ratio", self.min_lr_ratio, "must be a number in [0, 1]")
        if self.loss_type not in LOSS_TYPES:
            _fail("loss_type", self.loss_type, f"must be one of {', '.join(map(repr, LOSS_TYPES))}")
        if self.scale_rewards not in SCALE_REWARDS:
            _fail("scale_rewards", self.scale_rewards, f"must be one of {', '.join(map(repr, SCALE_REWARDS))}")
        for name in ("mask_truncated_completions", "dynamic_sampling"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "must be True or False")
        weights = self.reward_weights
        if weights is not None and (not isinstance(weights, list) or not weights
                                    or not all(_is_number(w) for w in weights)):
            _fail("reward_weights", weights, "must be None or a non-empty list of finite numbers, one per reward "
                                             "function")

    def train_config(self) -> TrainConfig:
        """The :class:`~mlakit.train.TrainConfig` of the shared Trainer (optimizer, schedule, clipping,
        balancing, evaluation cadence); one Trainer step is one GRPO step."""
        return TrainConfig(steps=self.max_steps, lr=self.learning_rate, min_lr_ratio=self.min_lr_ratio,
                           warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                           betas=(self.adam_beta1, self.adam_beta2), grad_clip=self.max_grad_norm,
                           bias_update_gamma=self.bias_update_gamma, eval_every=self.eval_steps, seed=self.seed)

    def replace(self, **changes: Any) -> GRPOConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["GRPOConfig", "LOSS_TYPES", "SCALE_REWARDS"]
