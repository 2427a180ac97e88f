"""Group-relative advantages against values computed by hand (DeepSeekMath §4.1.2, TRL 1.16's formula)."""

import math

import pytest
import torch

from mlakit.rl import group_advantages, zero_std_groups

# [1, 0, 0, 1] as one group of 4: mean 0.5; unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.5773503;
# A = +-0.5 / (0.5773503 + 1e-4) = +-0.86588 (TRL adds 1e-4 to the std).
A_1001 = 0.86588


def test_rewards_1_0_0_1_give_advantages_of_magnitude_0_86588():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), num_generations=4)
    torch.testing.assert_close(adv, torch.tensor([A_1001, -A_1001, -A_1001, A_1001]), atol=1e-5, rtol=0)


def test_equal_rewards_give_zero_advantages_not_nan():
    for scale in ("group", "batch", "none"):
        adv = group_advantages(torch.full((8,), 0.7), 4, scale)
        assert not adv.isnan().any()
        assert torch.equal(adv, torch.zeros(8))
    assert zero_std_groups(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2).tolist() == [True, False]


def test_groups_are_consecutive_rows_per_prompt():
    # prompt-major: [1, 0] then [0, 1] as two groups of 2: each has mean 0.5 and std sqrt(0.5) = 0.70711,
    # so A = +-0.5 / (0.70711 + 1e-4) = +-0.70700
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    torch.testing.assert_close(adv, torch.tensor([0.70700, -0.70700, -0.70700, 0.70700]), atol=1e-5, rtol=0)
    # [1, 1] and [0, 0]: each group is constant, so nothing to learn although the batch has a spread
    assert torch.equal(group_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2), torch.zeros(4))


def test_batch_and_none_scaling():
    rewards = torch.tensor([1.0, 0.0, 3.0, 3.0])  # groups [1, 0] and [3, 3]
    # "none" (Dr. GRPO) only centres on the group mean: [0.5, -0.5, 0, 0]
    torch.testing.assert_close(group_advantages(rewards, 2, "none"), torch.tensor([0.5, -0.5, 0.0, 0.0]))
    # "batch": centred per group, divided by the unbiased std of all four rewards: mean 1.75,
    # squared deviations 0.5625 + 3.0625 + 1.5625 + 1.5625 = 6.75, / 3 = 2.25, std 1.5;
    # 0.5 / (1.5 + 1e-4) = 0.33331
    expected = torch.tensor([0.5, -0.5, 0.0, 0.0]) / (1.5 + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, 2, "batch"), expected)
    assert math.isclose(float(expected[0]), 0.33331, abs_tol=1e-5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="scale_rewards='std'"):
        group_advantages(torch.zeros(4), 2, "std")
    with pytest.raises(ValueError, match="num_generations=1"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="5 rewards do not split into groups of num_generations=2"):
        group_advantages(torch.zeros(5), 2)
