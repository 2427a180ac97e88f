"""Rule rewards with TRL's signature, and the errors for a reward function that misbehaves."""

import pytest
import torch

from mlakit.data import AdditionTask, Problem
from mlakit.rl import (
    accuracy_reward,
    compute_rewards,
    format_reward,
    overlong_penalty,
    weighted_sum,
)

TASK = AdditionTask(1, 2)
P = Problem(47, 85)  # 47+85=132


def test_accuracy_uses_the_strict_verifier():
    acc = accuracy_reward(TASK)
    completions = ["<think>7+5=12</think><answer>132</answer>", "132", "<answer>131</answer><answer>132</answer>",
                   "132 apples", "[7+5=12,4+8+1=13]132"]
    assert acc(prompts=["47+85="] * 5, completions=completions, problem=[P] * 5) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert acc.__name__ == "accuracy"
    with pytest.raises(ValueError, match="needs the problems"):
        acc(prompts=["47+85="], completions=["132"])


def test_format_reward_is_r1s_tags_and_nothing_else():
    completions = ["<think>x</think><answer>132</answer>", "<answer>132</answer>", "132",
                   "<think>x</think><answer>132</answer> more"]
    assert format_reward(["p"] * 4, completions) == [1.0, 0.0, 0.0, 0.0]


def test_overlong_penalty_is_dapos_soft_punishment():
    # L_max = 10, L_cache = 4: free up to 6 tokens, then (6 - n) / 4 down to -1 at 10, -1 beyond
    pen = overlong_penalty(10, 4)
    ids = [[0] * n for n in (3, 6, 7, 8, 10, 11)]
    assert pen(prompts=["p"] * 6, completions=[""] * 6, completion_ids=ids) == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]


def test_weighted_sum_and_compute_rewards():
    fields = {"problem": [P, P], "completion_ids": [[1, 2], [3]]}
    completions = ["<think>a</think><answer>132</answer>", "131"]
    per_func, total = compute_rewards([accuracy_reward(TASK), format_reward], ["47+85="] * 2, completions,
                                      [1.0, 0.5], **fields)
    assert per_func.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert total.tolist() == [1.5, 0.0]
    combined = weighted_sum([accuracy_reward(TASK), format_reward], [1.0, 0.5], name="r1")
    assert combined(prompts=["47+85="] * 2, completions=completions, **fields) == [1.5, 0.0]
    assert combined.__name__ == "r1"


def test_a_misbehaving_reward_function_is_named():
    def short(prompts, completions, **kw):
        return [1.0]

    def nan(prompts, completions, **kw):
        return [0.0, float("nan")]

    def words(prompts, completions, **kw):
        return ["good", "bad"]

    with pytest.raises(ValueError, match="reward function 'short' returned 1 values for 2 completions"):
        compute_rewards([short], ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match=r"reward function 'nan' returned nan for completion 1 \('y'\)"):
        compute_rewards([nan], ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="reward function 'words' must return a list of numbers"):
        compute_rewards([words], ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="2 reward weights for 1 reward functions"):
        compute_rewards([format_reward], ["a"], ["x"], [1.0, 2.0])


def test_tensor_output_is_accepted():
    def t(prompts, completions, **kw):
        return torch.tensor([0.5] * len(completions))

    assert compute_rewards([t], ["a"], ["x"])[1].tolist() == [0.5]
