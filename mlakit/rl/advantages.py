"""Group-relative advantages: GRPO's replacement for PPO's value network (DeepSeekMath §4.1.2).

For each prompt GRPO samples a group of G completions and scores each with a
reward r_i. Instead of a learned critic, the baseline is the group's own mean:

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + EPS)

and every token of completion i gets A_i. Rows are prompt-major, as
:func:`mlakit.generate.generate` returns them: rows i * G .. i * G + G - 1 are the
group of prompt i.

As TRL 1.16 computes it: the std is the unbiased one (divides by N - 1) and
EPS = 1e-4 keeps a group whose rewards are all equal at advantage 0 rather
than 0 / 0. ``scale_rewards`` picks the denominator: ``"group"`` (GRPO), ``"batch"``
(the std of the whole batch: one scale for every group, so an easy group's
small spread is not blown up), or ``"none"`` (centre only: Dr. GRPO, arXiv
2503.20783, which argues the std division over-weights very easy and very
hard questions). Every variant still centres by the group mean.

A group whose rewards are all equal has A = 0 for every member: it contributes
no gradient, only tokens to the denominator. DAPO's dynamic sampling
(arXiv 2503.14476 §3.2) drops such groups: :func:`zero_std_groups` finds them.
"""

from __future__ import annotations

import torch

from .config import SCALE_REWARDS

ADVANTAGE_EPS = 1e-4  # TRL's: added to the std so equal rewards give 0, not 0 / 0


def _grouped(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """rewards (N,) -> (N / G, G), one row per prompt; clear errors for a wrong shape."""
    if isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 2:
        raise ValueError(f"num_generations={num_generations!r} is invalid: must be an integer >= 2 (a group needs "
                         "two samples for a standard deviation)")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be one number per completion, shape (N,); got {tuple(rewards.shape)}")
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of num_generations={num_generations}: "
                         "rows must be prompt-major, G consecutive completions per prompt")
    return rewards.float().view(-1, num_generations)  # (P, G)


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group") -> torch.Tensor:
    """Advantages (N,) of prompt-major ``rewards`` (N,) in groups of ``num_generations`` (float32).

    (r - group mean) / (std + 1e-4), std unbiased, of the group ("group"), of the whole
    batch ("batch"), or no division ("none"). [1, 0, 0, 1] in one group gives
    +-0.5 / (0.57735 + 1e-4) = +-0.86588.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale_rewards!r} is invalid: must be one of "
                         f"{', '.join(map(repr, SCALE_REWARDS))}")
    grouped = _grouped(rewards, num_generations)  # (P, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (P, G)
    if scale_rewards == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + ADVANTAGE_EPS)  # unbiased std per group
    elif scale_rewards == "batch":
        spread = grouped.std() if grouped.numel() > 1 else grouped.new_zeros(())  # unbiased std of the batch
        centred = centred / (spread + ADVANTAGE_EPS)
    return centred.reshape(-1)  # (N,)


def zero_std_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """(P,) bool: True for each group whose rewards are all equal (advantage 0, no gradient)."""
    grouped = _grouped(rewards, num_generations)  # (P, G)
    return grouped.amax(dim=1) == grouped.amin(dim=1)


__all__ = ["ADVANTAGE_EPS", "group_advantages", "zero_std_groups"]
