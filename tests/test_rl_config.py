"""GRPOConfig: TRL's names and defaults, validation that names the field and the allowed values."""

import dataclasses

import pytest

from mlakit.rl import GRPOConfig


def test_trl_names_and_defaults():
    cfg = GRPOConfig()
    names = {f.name for f in dataclasses.fields(cfg)}
    assert {"num_generations", "temperature", "max_completion_length", "beta", "epsilon", "epsilon_high",
            "num_iterations", "loss_type", "scale_rewards", "mask_truncated_completions", "reward_weights",
            "learning_rate", "max_steps", "max_grad_norm", "seed"} <= names
    # TRL 1.16's defaults: dapo loss, no KL, clip 0.2 both ways, G = 8, temperature 1, one pass, group std
    assert (cfg.loss_type, cfg.beta, cfg.epsilon, cfg.clip_high, cfg.num_generations, cfg.temperature,
            cfg.num_iterations, cfg.scale_rewards) == ("dapo", 0.0, 0.2, 0.2, 8, 1.0, 1, "group")
    assert GRPOConfig(epsilon_high=0.28).clip_high == 0.28
    assert GRPOConfig(prompts_per_step=3, num_generations=4).completions_per_step == 12


def test_train_config_maps_onto_the_shared_trainer():
    tc = GRPOConfig(learning_rate=3e-4, max_steps=7, max_grad_norm=0.5, adam_beta2=0.99, eval_steps=2,
                    seed=5).train_config()
    assert (tc.lr, tc.steps, tc.grad_clip, tc.betas, tc.eval_every, tc.seed) == (3e-4, 7, 0.5, (0.9, 0.99), 2, 5)
    assert tc.weight_decay == 0.0 and tc.min_lr_ratio == 1.0  # TRL: no decay; a constant rate after warmup


@pytest.mark.parametrize("field,value,message", [
    ("loss_type", "ppo", "GRPOConfig.loss_type='ppo' is invalid: must be one of 'grpo', 'bnpo', 'dr_grpo', 'dapo'"),
    ("scale_rewards", True, "GRPOConfig.scale_rewards=True is invalid: must be one of 'group', 'batch', 'none'"),
    ("num_generations", 1, "GRPOConfig.num_generations=1 is invalid: must be an integer >= 2"),
    ("temperature", 0.0, "GRPOConfig.temperature=0.0 is invalid: must be a finite number > 0"),
    ("beta", -0.1, "GRPOConfig.beta=-0.1 is invalid: must be a finite number >= 0"),
    ("epsilon", 0, "GRPOConfig.epsilon=0 is invalid"),
    ("epsilon_high", -1.0, "GRPOConfig.epsilon_high=-1.0 is invalid: must be a finite number > 0, or None"),
    ("num_iterations", 0, "GRPOConfig.num_iterations=0 is invalid: must be an integer >= 1"),
    ("max_completion_length", 0, "GRPOConfig.max_completion_length=0 is invalid"),
    ("prompts_per_step", 2.5, "GRPOConfig.prompts_per_step=2.5 is invalid"),
    ("soft_punish_cache", 32, "GRPOConfig.soft_punish_cache=32 is invalid: must be an integer in [0, "
                              "max_completion_length=32)"),
    ("reward_weights", [1.0, float("nan")], "GRPOConfig.reward_weights=[1.0, nan] is invalid"),
    ("mask_truncated_completions", "yes", "GRPOConfig.mask_truncated_completions='yes' is invalid: must be True or"),
    ("learning_rate", float("inf"), "GRPOConfig.learning_rate=inf is invalid"),
    ("adam_beta2", 1.0, "GRPOConfig.adam_beta2=1.0 is invalid: must be a number in [0, 1)"),
])
def test_bad_fields_are_named_with_the_allowed_values(field, value, message):
    with pytest.raises(ValueError) as info:
        GRPOConfig(**{field: value})
    assert str(info.value).startswith(message)


def test_replace_validates_and_tuples_become_lists():
    assert GRPOConfig(reward_weights=(1, 0.5)).reward_weights == [1, 0.5]
    with pytest.raises(ValueError, match="GRPOConfig.beta"):
        GRPOConfig().replace(beta=-1.0)
