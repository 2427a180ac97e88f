"""Checkers for the exercises of lesson 10: GRPO (group advantages, the clipped objective, the k3 estimator, and
how per-token losses are averaged).

The references follow DeepSeekMath §4.1 (arXiv 2402.03300), DAPO (arXiv 2503.14476), Dr. GRPO
(arXiv 2503.20783) and TRL's GRPOTrainer (1.16), and agree with the library:
:func:`mlakit.rl.group_advantages` (unbiased std + 1e-4), :func:`mlakit.rl.grpo_loss` (the clipped ratio
with ``epsilon`` / ``epsilon_high``), :func:`mlakit.rl.kl_k3` and :func:`mlakit.rl.aggregate_loss`. They are
written here independently, so the tests can compare them with the library. Each checker runs the
learner's function on cases chosen so that every typical mistake gives a different answer, and
:func:`diagnose` names the one the learner's answer equals.
"""

from __future__ import annotations

import torch

from ._core import Answer, _close, _expect_tensor, _Fail, checker, diagnose

ADVANTAGE_EPS = 1e-4  # TRL's: added to the group's std, so a group of equal rewards gets 0, not 0 / 0


# ---------------------------------------------------------------- 10.1
def _advantages(rewards: torch.Tensor, G: int, *, unbiased: bool = True, eps: float = ADVANTAGE_EPS,
                centre: str = "group", scale: str = "group", grouping: str = "prompt_major") -> torch.Tensor:
    """Group advantages as defined, or as one typical mistake computes them (keyword switches)."""
    r = rewards.to(torch.float64)
    grouped = r.view(-1, G) if grouping == "prompt_major" else r.view(G, -1).T  # (P, G)
    mean = grouped.mean(1, keepdim=True) if centre == "group" else grouped.mean()
    centred = grouped - mean if centre != "none" else grouped
    if scale == "group":
        spread = grouped.var(1, keepdim=True, unbiased=unbiased)
    elif scale == "batch":
        spread = grouped.var(unbiased=unbiased)
    else:
        spread = None
    if spread is not None:
        centred = centred / (spread.sqrt() + eps)
    out = centred if grouping == "prompt_major" else centred.T
    return out.reshape(-1).to(torch.float32)


def reference_group_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """A_i = (r_i - mean of its group) / (std of its group + 1e-4), (N,) float32 from rewards (N,).

    Rows are prompt-major: rewards[i * G .. i * G + G - 1] are the G completions of prompt i
    (G = ``num_generations``). The std is the unbiased one (divides by G - 1), as torch.std
    and TRL compute it; the 1e-4 keeps a group whose rewards are all equal at 0 instead of 0 / 0.
    """
    return _advantages(rewards, num_generations)


_ADVANTAGE_MISTAKES = [
    (dict(unbiased=False), "the std is the population one (divides by G). Hint: GRPO as TRL computes it uses the "
                           "unbiased std, dividing by G - 1: torch's default, grouped.std(dim=1)"),
    (dict(scale="none"), "the rewards are centred but not divided by the std. That is Dr. GRPO's scale_rewards="
                         "'none'; this exercise asks for GRPO's: divide by (std of the group + 1e-4)"),
    (dict(centre="none"), "the rewards are divided by the std but not centred. Hint: subtract the mean of the "
                          "group first, so that better-than-average completions get A > 0 and worse ones A < 0"),
    (dict(centre="batch", scale="batch"), "the baseline and the scale are those of the whole batch. Hint: each "
                                          "prompt is its own group: reshape to (N // G, G) and take the mean and "
                                          "std along dim=1"),
    (dict(centre="batch"), "the mean is the whole batch's. Hint: centre each group by its own mean "
                           "(reshape to (N // G, G), mean along dim=1, keepdim=True)"),
    (dict(scale="batch"), "the std is the whole batch's (TRL's scale_rewards='batch'). Hint: divide each group "
                          "by its own std, along dim=1"),
    (dict(grouping="interleaved"), "the groups are taken across the batch (rewards.view(G, -1)), not as G "
                                   "consecutive rows. Hint: rows are prompt-major, so rewards.view(-1, G) puts "
                                   "one prompt's G completions in a row"),
    (dict(eps=1e-8), "the epsilon is not 1e-4. Hint: add TRL's 1e-4 to the std (it also keeps a group of equal "
                     "rewards at 0)"),
    (dict(eps=0.0, unbiased=False), "the std is the population one and nothing is added to it. Hint: "
                                    "grouped.std(dim=1) (unbiased) + 1e-4"),
]


@checker("10.1", "group_advantages")
def check_group_advantages(group_advantages: Answer) -> str:
    """Exercise 10.1: group_advantages(rewards, num_generations) -> (N,) group-relative advantages."""

    cases = [
        (torch.tensor([1.0, 0.0, 0.0, 1.0]), 4),  # the lesson's hand example: +-0.86588
        (torch.tensor([2.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 1.0]), 4),  # accuracy + format; group 2 equal
        (torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0]), 3),  # 6 rewards in groups of 3 (interleaving shows)
        (torch.tensor([0.5, 0.5, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]), 2),  # groups of 2: two equal, two not
        (torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]), 8),  # every reward equal: all zeros, no NaN
    ]
    answers = []
    for rewards, G in cases:  # first the boundary every batch can hit: a group of equal rewards
        want = reference_group_advantages(rewards, G)
        got = group_advantages(rewards.clone(), G)
        got = _expect_tensor(got, want.shape, f"group_advantages of {len(rewards)} rewards (G = {G})")
        if not got.is_floating_point():
            raise _Fail(f"the advantages have dtype {got.dtype}; expected floats (rewards.float() before dividing)")
        if torch.isnan(got).any():
            raise _Fail(f"NaN for rewards {rewards.tolist()} with G = {G}: a group whose rewards are all equal has "
                        "std 0, and 0 / 0 is NaN. Hint: divide by (std + 1e-4), so such a group gets advantage 0 "
                        "(it carries no signal)")
        answers.append((rewards, G, want, got))
    for rewards, G, want, got in answers:
        where = f"for rewards {rewards.tolist()} with G = {G}"
        if _close(got, want):
            continue
        diagnose(got, [(_advantages(rewards, G, **switches), hint) for switches, hint in _ADVANTAGE_MISTAKES],
                 prefix=f"{where}: ")
        raise _Fail(f"{where}: got {[round(v, 5) for v in got.tolist()]}; expected "
                    f"{[round(v, 5) for v in want.tolist()]}. Hint: reshape to (N // G, G); (r - mean along "
                    "dim=1) / (std along dim=1 + 1e-4); reshape back to (N,)")
    return (f"matches the reference on {len(cases)} batches: [1, 0, 0, 1] gives +-0.86588, equal rewards give 0, "
            "unbiased std")


# ---------------------------------------------------------------- 10.2
def _objective(logprobs, old_logprobs, advantages, epsilon, epsilon_high, *, sign: float = 1.0, use_min: str = "min",
               clip: bool = True, low: str = "epsilon", high: str = "epsilon_high", ratio: str = "exp",
               broadcast: str = "rows"):
    """The per-token clipped objective, or one typical mistake of it (keyword switches)."""
    if ratio == "exp":
        rho = torch.exp(logprobs - old_logprobs)
    elif ratio == "reversed":
        rho = torch.exp(old_logprobs - logprobs)
    else:  # the log-ratio itself
        rho = logprobs - old_logprobs
    A = advantages[:, None] if broadcast == "rows" else advantages[None, :]  # (N, 1): one advantage per completion
    eps_of = {"epsilon": epsilon, "epsilon_high": epsilon_high}
    clipped = rho.clamp(1 - eps_of[low], 1 + eps_of[high])
    if not clip:
        return sign * rho * A
    if use_min == "min":
        return sign * torch.minimum(rho * A, clipped * A)
    if use_min == "max":
        return sign * torch.maximum(rho * A, clipped * A)
    return sign * clipped * A  # no min: the clipped term alone


def reference_clipped_objective(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                                epsilon: float, epsilon_high: float) -> torch.Tensor:
    """min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A) per token, (N, n), to be maximised.

    rho = pi_theta / pi_old = exp(logprobs - old_logprobs), (N, n); ``advantages`` (N,) holds one
    advantage per completion, shared by its tokens. The library's per-token loss is minus this
    (:func:`mlakit.rl.grpo_loss`, before the KL term and the average).
    """
    return _objective(logprobs, old_logprobs, advantages, epsilon, epsilon_high)


_OBJECTIVE_MISTAKES = [
    (dict(sign=-1.0), "the sign is flipped: that is the loss. Hint: return the objective itself, "
                      "min(rho A, clip(rho) A); the library minimises its negative"),
    (dict(use_min="none"), "the clipped term alone, without the min. Hint: take the minimum of rho A and "
                           "clip(rho) A: for A < 0 a ratio above 1 + epsilon_high must keep its full (negative) "
                           "value, the pessimistic bound"),
    (dict(use_min="max"), "max instead of min. Hint: PPO's objective is a pessimistic bound: "
                          "torch.minimum(rho * A, clipped * A)"),
    (dict(clip=False), "the ratio is not clipped. Hint: clip(rho, 1 - epsilon, 1 + epsilon_high) * A, then the min "
                       "with rho * A"),
    (dict(high="epsilon"), "the upper clip uses epsilon. Hint: clip-higher (DAPO) clips above at 1 + epsilon_high "
                           "and below at 1 - epsilon"),
    (dict(low="epsilon_high"), "the lower clip uses epsilon_high. Hint: clip below at 1 - epsilon, above at "
                               "1 + epsilon_high"),
    (dict(low="epsilon_high", high="epsilon"), "epsilon and epsilon_high are swapped. Hint: "
                                               "rho.clamp(1 - epsilon, 1 + epsilon_high)"),
    (dict(ratio="reversed"), "the ratio is upside down (pi_old / pi_theta). Hint: rho = exp(logprobs - "
                             "old_logprobs)"),
    (dict(ratio="log"), "the ratio is the log-ratio logprobs - old_logprobs. Hint: exponentiate it: "
                        "rho = torch.exp(logprobs - old_logprobs)"),
    (dict(broadcast="columns"), "each advantage multiplies a column (a token position) instead of a row (a "
                                "completion). Hint: advantages[:, None] has shape (N, 1) and broadcasts over "
                                "the tokens of each completion"),
]


def _objective_cases():
    """Log-ratios chosen so that every branch of the min and the clip is taken somewhere."""
    # per row: the log-ratios of its tokens and the row's advantage
    # rho = e^0.4 = 1.49 > 1 + eps_high with A > 0: clipped (capped); with A < 0: the unclipped side (pessimistic)
    # rho = e^-0.5 = 0.61 < 1 - eps with A < 0: clipped; with A > 0: the unclipped side
    # rho = e^0.25 = 1.28: above 1 + 0.2, below 1 + 0.28 (only clip-higher leaves it unclipped)
    log_ratio = torch.tensor([[0.4, -0.5, 0.0, 0.25, 0.1],
                              [0.4, -0.5, 0.0, 0.25, -0.1],
                              [0.3, -0.3, 0.19, -0.2, 0.02],
                              [0.0, 0.0, 0.0, 0.0, 0.0]])
    advantages = torch.tensor([0.87, -0.87, 1.5, -0.4])
    g = torch.Generator().manual_seed(10)
    old = -torch.rand(4, 5, generator=g) * 3  # (N, n) old log-probs, all < 0
    # first N == n, so that an advantage broadcast along the wrong axis still runs and shows
    sq_ratio = torch.tensor([[0.4, -0.5, 0.1, 0.0], [0.3, -0.3, 0.25, 0.05], [-0.6, 0.5, 0.0, 0.2],
                             [0.1, 0.2, -0.1, -0.2]])
    sq_old = -torch.rand(4, 4, generator=g) * 2
    return [(sq_old + sq_ratio, sq_old, torch.tensor([1.2, -0.7, 0.3, -1.1]), 0.2, 0.28),
            (old + log_ratio, old, advantages, 0.2, 0.28), (old + log_ratio, old, advantages, 0.2, 0.2)]


@checker("10.2", "clipped_objective")
def check_clipped_objective(clipped_objective: Answer) -> str:
    """Exercise 10.2: clipped_objective(logprobs, old_logprobs, advantages, epsilon, epsilon_high) -> (N, n)."""

    cases = _objective_cases()
    for logprobs, old, A, eps, eps_high in cases:
        want = reference_clipped_objective(logprobs, old, A, eps, eps_high)
        got = clipped_objective(logprobs, old, A, eps, eps_high)
        got = _expect_tensor(got, want.shape, f"clipped_objective for {tuple(logprobs.shape)} log-probs")
        if _close(got, want):
            continue
        where = f"with epsilon = {eps}, epsilon_high = {eps_high}"
        mistakes = [(_objective(logprobs, old, A, eps, eps_high, **switches), hint)
                    for switches, hint in _OBJECTIVE_MISTAKES]
        diagnose(got, mistakes, prefix=f"{where}: ")
        bad = (got.double() - want.double()).abs().argmax()
        row, col = divmod(int(bad), want.shape[1])
        rho = float(torch.exp(logprobs[row, col] - old[row, col]))
        raise _Fail(f"{where}: at row {row}, token {col} (rho = {rho:.4f}, A = {float(A[row]):.2f}) you give "
                    f"{float(got[row, col]):.5f}; expected {float(want[row, col]):.5f}. Hint: "
                    "torch.minimum(rho * A, rho.clamp(1 - epsilon, 1 + epsilon_high) * A) with A = advantages[:, None]")
    return (f"matches the reference on {len(cases)} batches: capped where the clip binds, pessimistic where it "
            "does not, clip-higher above")


# ---------------------------------------------------------------- 10.3
def _k3(logprobs, ref_logprobs, *, kind: str = "k3"):
    """The k3 estimator, or one typical mistake of it."""
    lp, ref = logprobs.to(torch.float64), ref_logprobs.to(torch.float64)
    x = ref - lp  # log pi_ref / pi_theta
    if kind == "k1":
        out = lp - ref  # log pi_theta / pi_ref, the naive estimator
    elif kind == "minus_k1":
        out = x
    elif kind == "k2":
        out = 0.5 * x**2
    elif kind == "reversed":
        out = torch.expm1(-x) + x  # e^{-x} + x - 1: the ratio taken the other way up
    elif kind == "no_minus_one":
        out = torch.exp(x) - x
    elif kind == "plus_x":
        out = torch.expm1(x) + x
    else:
        out = torch.expm1(x) - x
    return out.to(logprobs.dtype)


def reference_kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 per token, the shape of ``logprobs``.

    With x = ref_logprobs - logprobs: e^x - x - 1, computed as expm1(x) - x (>= 0 in floating
    point too, 0 at equality). Schulman's unbiased, never-negative estimator of KL(pi_theta || pi_ref)
    from samples of pi_theta, the one DeepSeekMath's GRPO uses.
    """
    return _k3(logprobs, ref_logprobs)


_K3_MISTAKES = [
    ("k1", "that is k1 = log(pi_theta / pi_ref), the naive estimator: right on average but negative for many "
           "tokens, and as a loss its gradient is zero in expectation (Tang and Munos 2025). Hint: with "
           "x = ref_logprobs - logprobs, k3 = e^x - x - 1"),
    ("minus_k1", "that is log(pi_ref / pi_theta) alone, negative whenever the policy is more likely than the "
                 "reference. Hint: k3 = e^x - x - 1 with x = ref_logprobs - logprobs"),
    ("reversed", "the ratio is upside down: x = logprobs - ref_logprobs. Hint: k3 uses pi_ref / pi_theta, so "
                 "x = ref_logprobs - logprobs (the samples come from pi_theta)"),
    ("k2", "that is k2 = (log ratio)^2 / 2: never negative but biased. Hint: k3 = e^x - x - 1"),
    ("no_minus_one", "the -1 is missing (k3 would be 1 where the two policies agree). Hint: e^x - x - 1"),
    ("plus_x", "the log term has the wrong sign. Hint: k3 = e^x - x - 1, which is 0 at x = 0 and >= 0 "
               "everywhere"),
]


def _k3_cases():
    g = torch.Generator().manual_seed(3)
    lp = -torch.rand(3, 6, generator=g) * 4  # (N, n) log-probs of the sampled tokens
    ref = lp + torch.randn(3, 6, generator=g) * 0.8  # a reference that disagrees, both ways
    same = -torch.rand(2, 5, generator=g) * 3
    tiny_lp = -torch.rand(64, 32, generator=g) * 2
    tiny = tiny_lp + torch.randn(64, 32, generator=g) * 1e-3  # log-ratios near 0, where rounding shows
    return [(lp, ref), (same, same.clone()), (tiny_lp, tiny)]


@checker("10.3", "kl_k3")
def check_kl_k3(kl_k3: Answer) -> str:
    """Exercise 10.3: kl_k3(logprobs, ref_logprobs) -> per-token k3, >= 0 and 0 where the two agree."""

    cases = _k3_cases()
    for i, (lp, ref) in enumerate(cases):
        want = reference_kl_k3(lp, ref)
        got = kl_k3(lp, ref)
        got = _expect_tensor(got, want.shape, f"kl_k3 for {tuple(lp.shape)} log-probs")
        if i == 1 and not bool((got == 0).all()):  # of the mistakes only a missing -1 differs from 0 here
            diagnose(got, [(_k3(lp, ref, kind=kind), hint) for kind, hint in _K3_MISTAKES if kind == "no_minus_one"],
                     prefix="where the policy equals the reference: ")
            raise _Fail(f"where the policy equals the reference k3 must be exactly 0; you give values up to "
                        f"{float(got.abs().max()):.3g}. Hint: e^x - x - 1 with x = ref_logprobs - logprobs = 0")
        if not _close(got, want, atol=1e-6):
            diagnose(got, [(_k3(lp, ref, kind=kind), hint) for kind, hint in _K3_MISTAKES])
            raise _Fail(f"values differ from the reference (largest gap {float((got.double() - want.double()).abs().max()):.3g})."
                        " Hint: x = ref_logprobs - logprobs; k3 = e^x - x - 1")
        if bool((got < 0).any()):
            raise _Fail(f"k3 is negative at {int((got < 0).sum())} tokens (down to {float(got.min()):.2g}) where the "
                        "log-ratio is tiny: in float32, exp(x) - x - 1 rounds below 0 there. Hint: compute "
                        "torch.expm1(x) - x, which is >= 0 in floating point too")
    return f"matches the reference on {len(cases)} inputs: e^x - x - 1 with x = log pi_ref/pi, never negative, 0 at equality"


# ---------------------------------------------------------------- 10.4
def _aggregate(per_token, mask, loss_type, max_completion_length, *, kind: str = "right"):
    """One scalar from per-token losses, as defined or as one typical mistake computes it."""
    m = mask.to(torch.float64)
    x = per_token.to(torch.float64)
    masked = x * m
    if kind == "mean_all":  # padding counted in the denominator
        return x.mean() if loss_type != "grpo" else x.mean(-1).mean()
    if kind == "unmasked_sum":
        return x.sum() / m.sum()
    if kind == "swap":  # grpo and dapo exchanged
        loss_type = {"grpo": "dapo", "dapo": "grpo", "bnpo": "grpo"}.get(loss_type, loss_type)
    if kind == "drgrpo_tokens" and loss_type == "dr_grpo":
        loss_type = "dapo"
    if kind == "drgrpo_row" and loss_type == "dr_grpo":
        return (masked.sum(-1) / max_completion_length).sum()
    if kind == "grpo_sum" and loss_type == "grpo":
        return (masked.sum(-1) / m.sum(-1).clamp_min(1.0)).sum()
    if loss_type == "grpo":
        return (masked.sum(-1) / m.sum(-1).clamp_min(1.0)).mean()
    if loss_type in ("bnpo", "dapo"):
        return masked.sum() / m.sum().clamp_min(1.0)
    return masked.sum() / (x.shape[0] * max_completion_length)


def reference_aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str,
                             max_completion_length: int) -> torch.Tensor:
    """One number from per-token losses (N, n) under a completion mask (N, n), by ``loss_type``:

    - "grpo": the mean over the masked tokens of each completion, then the mean over completions;
    - "dapo" (and "bnpo"): the sum over every masked token of the batch / how many there are;
    - "dr_grpo": that sum / (N x max_completion_length), a constant.
    """
    return _aggregate(per_token, mask, loss_type, max_completion_length).to(per_token.dtype)


_AGGREGATE_MISTAKES = [
    ("mean_all", "the padding is averaged in. Hint: multiply by the mask and divide by the number of masked "
                 "tokens, not by every position"),
    ("unmasked_sum", "the padding's losses are summed in. Hint: (per_token * mask).sum() before dividing"),
    ("swap", "grpo and dapo are swapped. Hint: \"grpo\" averages within each completion first (a short completion "
             "weighs as much as a long one); \"dapo\" pools every token of the batch"),
    ("drgrpo_tokens", "dr_grpo divides by the number of tokens, like dapo. Hint: Dr. GRPO's denominator is a "
                      "constant, N x max_completion_length, so a long completion is not averaged away"),
    ("drgrpo_row", "dr_grpo divides by max_completion_length but does not average over the N completions. Hint: "
                   "divide the masked sum by N x max_completion_length"),
    ("grpo_sum", "grpo sums the per-completion means instead of averaging them. Hint: .mean() over completions"),
]


@checker("10.4", "aggregate_loss")
def check_aggregate_loss(aggregate_loss: Answer) -> str:
    """Exercise 10.4: aggregate_loss(per_token, mask, loss_type, max_completion_length) -> a scalar tensor."""

    per_token = torch.tensor([[1.0, 2.0, 3.0, 9.0, 9.0],
                              [4.0, 9.0, 9.0, 9.0, 9.0],
                              [0.5, 0.5, 0.5, 0.5, 0.5]])  # 9: a padding position, it must not count
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    g = torch.Generator().manual_seed(4)
    big = torch.randn(4, 7, generator=g)
    big_mask = torch.arange(7)[None, :] < torch.tensor([7, 2, 5, 1])[:, None]
    cases = [(per_token, mask, t, 5) for t in ("grpo", "dapo", "bnpo", "dr_grpo")]
    cases += [(big, big_mask, t, 8) for t in ("grpo", "dapo", "dr_grpo")]
    for x, m, loss_type, L in cases:
        want = reference_aggregate_loss(x, m, loss_type, L)
        got = aggregate_loss(x, m, loss_type, L)
        if not isinstance(got, torch.Tensor):
            raise _Fail(f"return a scalar torch.Tensor (so it can be backpropagated), got {type(got).__name__}")
        if got.numel() != 1:
            raise _Fail(f"loss_type={loss_type!r} gives shape {tuple(got.shape)}; expected a scalar")
        got = got.reshape(())
        if _close(got, want):
            continue
        where = f"loss_type={loss_type!r}: you give {got.item():.5f}; expected {want.item():.5f}: "
        diagnose(got, [(_aggregate(x, m, loss_type, L, kind=kind).to(x.dtype), hint)
                       for kind, hint in _AGGREGATE_MISTAKES], prefix=where)
        raise _Fail(where + "Hint: grpo: (x * mask).sum(-1) / mask.sum(-1), then .mean(); dapo and bnpo: "
                            "(x * mask).sum() / mask.sum(); dr_grpo: (x * mask).sum() / (N * max_completion_length)")
    return f"matches the reference for every loss_type on {len(cases)} cases: padding never counts"


__all__ = ["reference_group_advantages", "check_group_advantages", "reference_clipped_objective",
           "check_clipped_objective", "reference_kl_k3", "check_kl_k3", "reference_aggregate_loss",
           "check_aggregate_loss"]
