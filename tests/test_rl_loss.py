"""GRPO's clipped objective, k3 and the four loss aggregations against values computed by hand."""

import math

import pytest
import torch

from mlakit.rl import K3_LOG_RATIO_CLAMP, GRPOConfig, grpo_loss, kl_k3

# One group of 4 completions with rewards [1, 0, 0, 1] (G = 4): advantages A = [a, -a, -a, a] with
# a = 0.5 / (sqrt(1/3) + 1e-4) = 0.8658754 (see test_rl_advantages.py). Completion lengths [2, 4, 3, 1]:
# 10 tokens, padded to width 4 = max_completion_length.
a = 0.8658754
ADV = torch.tensor([a, -a, -a, a])
LENGTHS = [2, 4, 3, 1]
MASK = torch.tensor([[i < n for i in range(4)] for n in LENGTHS])  # (4, 4)
# At ratio 1 and beta 0 each token's loss is -A_i, so:
# "grpo":    per-completion means are -A_i; their mean is -(a - a - a + a) / 4 = 0.
# "dapo":    sum over tokens -sum_i |o_i| A_i = -(2a - 4a - 3a + 1a) = 4a, over 10 tokens: 0.4a = 0.34635.
# "bnpo":    the same number as "dapo" here (one process, one minibatch).
# "dr_grpo": 4a / (4 completions x max_completion_length 4) = 0.25a = 0.21647.
AT_RATIO_ONE = {"grpo": 0.0, "dapo": 0.34635, "bnpo": 0.34635, "dr_grpo": 0.21647}
# d loss / d logp_i,t = -A_i * rho * w_i,t at rho = 1 on the mask, with the weight w of each aggregation:
# "grpo" 1 / (4 |o_i|):  -a/8, +a/16, +a/12, -a/4 = -0.108234, 0.054117, 0.072156, -0.216469 per row;
# "dapo"/"bnpo" 1 / 10: -+0.086588; "dr_grpo" 1 / 16: -+0.054117. Zero on padding.
GRAD_PER_ROW = {"grpo": [-0.108234, 0.054117, 0.072156, -0.216469],
                "dapo": [-0.086588, 0.086588, 0.086588, -0.086588],
                "bnpo": [-0.086588, 0.086588, 0.086588, -0.086588],
                "dr_grpo": [-0.054117, 0.054117, 0.054117, -0.054117]}
GARBAGE = 80.0  # a log-prob on padding that would overflow exp() if it were not masked first


def _logprobs():
    old = torch.log(torch.tensor([[0.3, 0.5, 0.2, 0.9], [0.1, 0.7, 0.4, 0.6], [0.8, 0.3, 0.5, 0.2],
                                  [0.25, 0.5, 0.5, 0.5]]))
    old = old.masked_fill(~MASK, 0.0)  # the rollout records 0 off the mask
    new = old.masked_fill(~MASK, GARBAGE).clone().requires_grad_(True)  # ratio 1 on the mask
    return new, old


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_at_ratio_one_and_its_gradient_follow_the_formula(loss_type):
    new, old = _logprobs()
    cfg = GRPOConfig(loss_type=loss_type, max_completion_length=4, num_generations=4)
    loss, metrics = grpo_loss(new, old, ADV, MASK, cfg)
    assert math.isclose(loss.item(), AT_RATIO_ONE[loss_type], abs_tol=1e-5)
    loss.backward()
    expected = torch.tensor(GRAD_PER_ROW[loss_type])[:, None].expand(4, 4) * MASK  # 0 on padding
    torch.testing.assert_close(new.grad, expected, atol=1e-5, rtol=0)
    assert torch.equal(new.grad[~MASK], torch.zeros(int((~MASK).sum())))  # padding gets exactly zero gradient
    assert metrics["clip_ratio"] == 0.0 and "kl" not in metrics


def _one_token(ratio, advantage, **config):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    cfg = GRPOConfig(loss_type="grpo", **config)
    loss, metrics = grpo_loss(logp, torch.zeros(1, 1), torch.tensor([advantage]), torch.ones(1, 1, dtype=torch.bool),
                              cfg)
    loss.backward()
    return -loss.item(), logp.grad.item(), metrics  # the objective (what GRPO maximises) and d loss / d logp


def test_clipping_at_epsilon_0_2():
    # ratio 1.5, A = +1: min(1.5, clip(1.5, 0.8, 1.2) = 1.2) = 1.2, the clipped branch: constant, no gradient
    objective, grad, metrics = _one_token(1.5, 1.0, epsilon=0.2)
    assert math.isclose(objective, 1.2, abs_tol=1e-6) and grad == 0.0
    assert metrics["clip_ratio_high"] == 1.0 and metrics["clip_ratio_low"] == 0.0
    # ratio 0.5, A = -1: min(-0.5, -0.8) = -0.8, clipped: no gradient
    objective, grad, metrics = _one_token(0.5, -1.0, epsilon=0.2)
    assert math.isclose(objective, -0.8, abs_tol=1e-6) and grad == 0.0
    assert metrics["clip_ratio_low"] == 1.0 and metrics["clip_ratio_high"] == 0.0
    # ratio 0.5, A = +1: min(0.5, 0.8) = 0.5, unclipped: d(-rho A)/d logp = -rho A = -0.5
    objective, grad, metrics = _one_token(0.5, 1.0, epsilon=0.2)
    assert math.isclose(objective, 0.5, abs_tol=1e-6) and math.isclose(grad, -0.5, abs_tol=1e-6)
    assert metrics["clip_ratio"] == 0.0


def test_clip_higher_epsilon_high_0_28():
    objective, grad, _ = _one_token(1.5, 1.0, epsilon=0.2, epsilon_high=0.28)  # DAPO: min(1.5, 1.28)
    assert math.isclose(objective, 1.28, abs_tol=1e-6) and grad == 0.0
    objective, grad, _ = _one_token(0.5, -1.0, epsilon=0.2, epsilon_high=0.28)  # the lower bound is unchanged
    assert math.isclose(objective, -0.8, abs_tol=1e-6)


def test_k3_values():
    # x = log pi_ref - log pi = 0.1: e^0.1 - 0.1 - 1 = 0.0051709
    assert math.isclose(kl_k3(torch.tensor(0.0), torch.tensor(0.1)).item(), 0.0051709, abs_tol=1e-7)
    assert kl_k3(torch.tensor(-2.3), torch.tensor(-2.3)).item() == 0.0  # equality
    x = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([1e-8, -1e-8, 1e-30, 3e-7])])
    k3 = kl_k3(torch.zeros_like(x), x)
    assert (k3 >= 0).all()  # never negative, even where exp(x) - 1 - x would round below zero
    assert torch.isfinite(kl_k3(torch.tensor(-1e4), torch.tensor(0.0)))  # the clamp keeps e^x finite
    big = kl_k3(torch.tensor(0.0), torch.tensor(K3_LOG_RATIO_CLAMP + 5))
    assert math.isclose(big.item(), math.exp(K3_LOG_RATIO_CLAMP) - K3_LOG_RATIO_CLAMP - 1, rel_tol=1e-5)


def test_kl_term_with_beta():
    # one token at ratio 1 with A = 0 and x = 0.1: the loss is beta * k3 = 0.04 * 0.0051709 = 0.00020684;
    # d/d logp (e^(ref - logp) - (ref - logp) - 1) = 1 - e^0.1, times beta: 0.04 * (1 - 1.1051709) = -0.0042068
    logp = torch.zeros(1, 1, requires_grad=True)
    cfg = GRPOConfig(beta=0.04, loss_type="grpo")
    loss, metrics = grpo_loss(logp, torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), cfg,
                              ref_logprobs=torch.full((1, 1), 0.1))
    loss.backward()
    assert math.isclose(loss.item(), 0.00020684, abs_tol=1e-8)
    assert math.isclose(logp.grad.item(), -0.0042068, abs_tol=1e-7)
    assert math.isclose(metrics["kl"], 0.0051709, abs_tol=1e-7)
    with pytest.raises(ValueError, match="beta=0.04 weighs a KL"):
        grpo_loss(logp, torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), cfg)


def test_entropy_metric_from_logits():
    # uniform logits over 4 tokens: entropy log 4 = 1.386294 nats at any temperature
    new, old = _logprobs()
    _, metrics = grpo_loss(new, old, ADV, MASK, GRPOConfig(), logits=torch.zeros(4, 4, 4))
    assert math.isclose(metrics["entropy"], math.log(4), abs_tol=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError, match="one shape"):
        grpo_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3, dtype=torch.bool),
                  GRPOConfig())
    with pytest.raises(ValueError, match="3 advantages for 2 completions"):
        grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3, dtype=torch.bool),
                  GRPOConfig())
