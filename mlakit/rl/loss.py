"""The GRPO objective per token, its k3 KL penalty, and the four ways TRL averages it.

Per token t of completion i (DeepSeekMath §4.1, eq. 3, written as a loss):

    rho    = pi_theta(o_t) / pi_old(o_t) = exp(logp - old_logp)
    l_i,t  = -min(rho A_i, clip(rho, 1 - epsilon, 1 + epsilon_high) A_i) + beta * k3_i,t

``pi_old`` is the policy that sampled the rollouts (its log-probs recorded at
sampling time, :func:`mlakit.generate.generate`): with ``num_iterations`` = 1 the
ratio is 1 and the clip never binds, so the loss is -A averaged, which is 0 at the
first step even though its gradient is not (a pitfall users report). The clip
stops a token from moving further once its ratio has left the trust region in
the direction its advantage pushes; DAPO's clip-higher (arXiv 2503.14476 §3.1)
sets a wider upper bound (epsilon_high 0.28 over epsilon 0.2) so rare tokens with
A > 0 can still grow.

k3 (Schulman 2020, "Approximating KL divergence") is the unbiased, always
non-negative estimator DeepSeekMath uses for KL(pi_theta || pi_ref) from samples of
pi_theta: with x = log pi_ref - log pi_theta, k3 = e^x - x - 1 >= 0, 0 at x = 0.
Computed as expm1(x) - x, which is >= 0 in floating point too (exp(x) - 1 - x
rounds to small negatives near 0). x is clamped to [-20, 20] (K3_LOG_RATIO_CLAMP)
so a long completion with one very unlikely token cannot overflow e^x to inf;
beyond the clamp the penalty is constant and passes no gradient. Using
log(pi/pi_ref) itself as the penalty would give zero gradient in expectation
(Tang and Munos, arXiv 2506.09477).

How the per-token losses l_i,t become one number (``loss_type``, as TRL 1.16):

- ``"grpo"``: mean over the tokens of each completion, then over completions
  (DeepSeekMath's 1/G sum_i 1/|o_i| sum_t). Long wrong answers are penalised
  less per token, which Dr. GRPO (arXiv 2503.20783) blames for growing lengths;
- ``"bnpo"`` and ``"dapo"``: sum over every completion token of the batch / their
  count (DAPO's token-level loss). In TRL "dapo" divides by the token count of
  the whole generation batch across processes and accumulation steps; here a
  step is one process and one minibatch, so the two are the same number;
- ``"dr_grpo"``: that sum / (completions x max_completion_length), a constant.

Padding (``completion_mask`` False) is masked before the exponential, so a
garbage log-prob there can neither overflow nor pass a gradient.
"""

from __future__ import annotations

import torch

from .config import LOSS_TYPES, GRPOConfig

K3_LOG_RATIO_CLAMP = 20.0  # |log pi_ref - log pi| beyond this is clamped: e^20 ~ 5e8 still fits float32


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = pi_ref/pi - log(pi_ref/pi) - 1 per token, same shape as ``logprobs``; >= 0, 0 at equality.

    The log-ratio log pi_ref - log pi is clamped to [-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP].
    At log-ratio 0.1: e^0.1 - 0.1 - 1 = 0.0051709.
    """
    x = (ref_logprobs - logprobs).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return torch.expm1(x) - x


def aggregate_loss(per_token: torch.Tensor, completion_mask: torch.Tensor, loss_type: str,
                   max_completion_length: int) -> torch.Tensor:
    """One scalar from per-token losses (N, n) under ``completion_mask`` (N, n), by ``loss_type``
    (see the module docstring)."""
    mask = completion_mask.to(per_token.dtype)  # (N, n)
    masked = per_token * mask  # (N, n)
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp_min(1.0)).mean()  # per-completion mean, then mean
    if loss_type in ("bnpo", "dapo"):
        return masked.sum() / mask.sum().clamp_min(1.0)  # every token of the batch counts once
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token.shape[0] * max_completion_length)  # a constant denominator
    raise ValueError(f"loss_type={loss_type!r} is invalid: must be one of {', '.join(map(repr, LOSS_TYPES))}")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.to(values.dtype)
    return float((values * mask).sum() / mask.sum().clamp_min(1.0))


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (N, n) in nats of softmax(logits / temperature) per position, logits (N, n, vocab)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (N, n, vocab)
    return -(logp.exp() * logp).sum(-1)


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              completion_mask: torch.Tensor, config: GRPOConfig, ref_logprobs: torch.Tensor | None = None,
              logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's loss (to minimise) and its metrics; see the module docstring.

    ``logprobs`` (N, n): log pi_theta of the sampled tokens, with gradient;
    ``old_logprobs`` (N, n): pi_old's, from the rollout (no gradient);
    ``advantages`` (N,) one per completion; ``completion_mask`` (N, n) True on
    completion tokens; ``ref_logprobs`` (N, n) the frozen reference's, needed when
    ``config.beta`` > 0 (and logged as ``kl`` whenever given); ``logits`` (N, n, vocab)
    the policy's raw logits at those positions, for the entropy metric (at
    ``config.temperature``). Uses ``config.epsilon``, ``epsilon_high``, ``beta``,
    ``loss_type`` and ``max_completion_length``.

    Metrics (floats): ``clip_ratio_low`` (share of tokens with rho < 1 - epsilon and A < 0),
    ``clip_ratio_high`` (rho > 1 + epsilon_high and A > 0), ``clip_ratio`` (either: the
    tokens the clip stopped), ``kl`` (mean k3) and ``entropy`` when they can be computed.
    """
    if logprobs.shape != old_logprobs.shape or logprobs.shape != completion_mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and "
                         f"completion_mask {tuple(completion_mask.shape)} must have one shape (N, n)")
    if advantages.numel() != logprobs.shape[0]:
        raise ValueError(f"{advantages.numel()} advantages for {logprobs.shape[0]} completions: one per completion")
    if config.beta > 0 and ref_logprobs is None:
        raise ValueError(f"beta={config.beta} weighs a KL to the reference model, but no ref_logprobs were given "
                         "(set beta=0 to train without a reference)")
    mask = completion_mask.bool()  # (N, n)
    A = advantages.reshape(-1, 1).to(logprobs.dtype)  # (N, 1): every token of completion i gets A_i
    log_ratio = (logprobs - old_logprobs.detach()).masked_fill(~mask, 0.0)  # (N, n); padding -> ratio 1
    ratio = log_ratio.exp()  # rho
    low, high = 1.0 - config.epsilon, 1.0 + config.clip_high
    clipped = ratio.clamp(low, high)
    per_token = -torch.min(ratio * A, clipped * A)  # (N, n)
    kl = None
    if ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs.detach()).masked_fill(~mask, 0.0)  # (N, n)
        if config.beta > 0:
            per_token = per_token + config.beta * kl
    loss = aggregate_loss(per_token, mask, config.loss_type, config.max_completion_length)
    with torch.no_grad():
        is_low = (ratio < low) & (A < 0)  # the clip stopped a push down
        is_high = (ratio > high) & (A > 0)  # the clip stopped a push up
        metrics = {"clip_ratio_low": _masked_mean(is_low.float(), mask),
                   "clip_ratio_high": _masked_mean(is_high.float(), mask),
                   "clip_ratio": _masked_mean((is_low | is_high).float(), mask)}
        if kl is not None:
            metrics["kl"] = _masked_mean(kl, mask)
        if logits is not None:
            metrics["entropy"] = _masked_mean(token_entropy(logits, config.temperature), mask)
    return loss, metrics


__all__ = ["K3_LOG_RATIO_CLAMP", "kl_k3", "aggregate_loss", "token_entropy", "grpo_loss"]
