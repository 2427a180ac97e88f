"""Reinforcement learning with verifiable rewards: GRPO (DeepSeekMath §4.1) and its DAPO and Dr. GRPO variants.

One concept per module, named as TRL names them so the vocabulary carries over:

- :mod:`.config`: :class:`GRPOConfig` (num_generations, beta, epsilon, epsilon_high,
  num_iterations, loss_type, scale_rewards, ...), validated;
- :mod:`.advantages`: :func:`group_advantages`, GRPO's critic-free baseline;
- :mod:`.loss`: :func:`grpo_loss` (clipped ratio, k3 KL, the four aggregations) and :func:`kl_k3`;
- :mod:`.rewards`: rule rewards with TRL's signature (accuracy, R1's format,
  DAPO's overlong penalty) and :func:`compute_rewards`;
- :mod:`.trainer`: :class:`GRPOTrainer`, rollouts on the latent cache and updates
  on the shared :class:`mlakit.train.Trainer`;
- :mod:`.multitask`: several skills in one run: :func:`mixed_prompts`, :func:`per_task_reward`
  (each completion scored by its task's reward), :func:`skills_eval` (held-out accuracy per skill);
- :mod:`.cli`: ``mlakit grpo``. The recipe is :func:`mlakit.recipes.grpo`.

Papers: DeepSeekMath (arXiv 2402.03300) §4.1, DeepSeek-R1 (arXiv 2501.12948) §2.2,
DAPO (arXiv 2503.14476), Dr. GRPO (arXiv 2503.20783); TRL's GRPOTrainer (1.16).
"""

from .advantages import ADVANTAGE_EPS, group_advantages, zero_std_groups
from .config import LOSS_TYPES, SCALE_REWARDS, GRPOConfig
from .loss import K3_LOG_RATIO_CLAMP, aggregate_loss, grpo_loss, kl_k3, token_entropy
from .multitask import TASK_FIELD, combine_evals, mixed_prompts, per_task_reward, skills_eval
from .rewards import (
    ACCURACY,
    RewardFunc,
    accuracy_reward,
    call_reward,
    compute_rewards,
    format_reward,
    overlong_penalty,
    reward_name,
    weighted_sum,
)
from .trainer import GRPOTrainer, Rollout, completion_logprobs, held_out_accuracy, prompt_and_fields

__all__ = [
    "GRPOConfig", "LOSS_TYPES", "SCALE_REWARDS",
    "ADVANTAGE_EPS", "group_advantages", "zero_std_groups",
    "K3_LOG_RATIO_CLAMP", "kl_k3", "aggregate_loss", "token_entropy", "grpo_loss",
    "RewardFunc", "ACCURACY", "reward_name", "format_reward", "accuracy_reward", "overlong_penalty", "weighted_sum",
    "call_reward", "compute_rewards",
    "GRPOTrainer", "Rollout", "completion_logprobs", "held_out_accuracy", "prompt_and_fields",
    "TASK_FIELD", "mixed_prompts", "per_task_reward", "combine_evals", "skills_eval",
]
