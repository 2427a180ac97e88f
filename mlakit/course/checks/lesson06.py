"""Checkers for the exercises of lesson 06: load balancing of DeepSeekMoE.

The three measures of the lesson, in the conventions of :mod:`mlakit.moe`:
MaxVio of expert loads (arXiv 2408.15664), the aux-loss-free bias step
(b_i += gamma * sign(mean load - load_i), DeepSeek-V3 §2.1.2) and V3's
complementary sequence-wise balance loss alpha * sum_i f_i P_i.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...moe import max_violation, sequence_balance_loss
from ._core import Answer, _close, _expect_tensor, _Fail, _LearnerError, checker, diagnose


def _call_on_counts(fn: Callable, *args):
    """Call the learner's function; an integer-dtype error gets its own hint (counts are int64)."""
    try:
        return fn(*args)
    except _LearnerError as raised:
        e = raised.error
        if isinstance(e, RuntimeError) and ("dtype" in str(e) or "Long" in str(e)):
            raise _Fail(f"your code raised RuntimeError: {e}. Hint: counts are integers (int64); "
                        "convert them with counts.float() before taking a mean") from None
        raise


def _as_float_tensor(value, what: str) -> torch.Tensor:
    """The learner's result as a float tensor (a Python number is accepted for a scalar)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    if not isinstance(value, torch.Tensor):
        raise _Fail(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    return value.detach().float()


def _compare(got: torch.Tensor, want: torch.Tensor) -> str:
    """'you get [...]; expected [...]' for a few values, else the first entries where the two differ."""
    if got.numel() <= 4:
        return (f"you get {[round(v, 4) for v in got.flatten().tolist()]}; expected "
                f"{[round(v, 4) for v in want.flatten().tolist()]}")
    differ = ~torch.isclose(got.double(), want.double(), rtol=1e-4, atol=1e-5, equal_nan=True)
    where = [tuple(i) for i in differ.nonzero().tolist()[:2]]
    return "; ".join(f"at [{', '.join(map(str, i))}] you get {float(got[i]):.4g}, expected {float(want[i]):.4g}"
                     for i in where) + f" ({int(differ.sum())} of {want.numel()} entries differ)"


# ---------------------------------------------------------------- 06.1
def reference_max_violation(counts: torch.Tensor) -> torch.Tensor:
    """MaxVio over the last dim: (max load - mean load) / mean load; counts (..., E) -> (...,)."""
    return max_violation(counts)


def _max_violation_cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(61)
    return [
        torch.tensor([30, 10, 20, 4]),  # one step of one layer
        torch.tensor([8, 8, 8, 8, 8, 8]),  # perfectly balanced: 0
        torch.tensor([24, 0, 0, 0]),  # collapse: one expert takes everything, E - 1
        torch.randint(0, 50, (3, 8), generator=g),  # (layers, experts)
        torch.randint(0, 50, (5, 2, 16), generator=g),  # (steps, layers, experts), a LoadTracker history
    ]


@checker("06.1", "max_violation")
def check_max_violation(max_violation_fn: Answer) -> str:
    """Exercise 06.1: max_violation(counts) -> MaxVio over the last dim, shape counts.shape[:-1]."""

    cases = _max_violation_cases()
    for counts in cases:
        want = reference_max_violation(counts)
        got = _as_float_tensor(_call_on_counts(max_violation_fn, counts), f"max_violation of counts {tuple(counts.shape)}")
        if got.shape != want.shape and got.numel() == want.numel() == 1:
            got = got.reshape(want.shape)
        label = f"for counts {counts.tolist()}" if counts.dim() == 1 else f"for counts of shape {tuple(counts.shape)}"
        if got.shape != want.shape:
            load = counts.float()
            if counts.dim() > 1 and got.shape == load.shape[1:] or got.numel() == 1:
                raise _Fail(f"{label} you return shape {tuple(got.shape)}; expected {tuple(want.shape)}. "
                            "Hint: reduce over the experts only, the last dimension (dim=-1), "
                            "so there is one MaxVio per layer and step")
            _expect_tensor(got, want.shape, f"max_violation {label}")
        if _close(got, want):
            continue
        load = counts.float()
        mean, top = load.mean(-1), load.amax(-1)
        mistakes = [
            ((top - mean) / top, "you divided by the largest load. Hint: MaxVio is relative to the MEAN load"),
            (top / mean, "you forgot to subtract the mean: a perfectly balanced layer must give 0, not 1. "
                         "Hint: (max load - mean load) / mean load"),
            (top - mean, "that is the excess in tokens, not relative to the mean. Hint: divide by the mean load"),
            ((mean - load.amin(-1)) / mean, "you measured the most UNDERloaded expert. Hint: use the largest load"),
            (load.std(-1) / mean, "that is the coefficient of variation (std / mean). Hint: MaxVio uses the "
                                  "single most loaded expert: (max - mean) / mean"),
            ((top - mean) / load.sum(-1), "you divided by the total load. Hint: divide by the mean load "
                                          "(total / number of experts)"),
        ]
        diagnose(got, mistakes, prefix=f"{label}: {_compare(got, want)}: ")
        raise _Fail(f"{label}: {_compare(got, want)}. "
                    "Hint: (counts.max(-1) - counts.mean(-1)) / counts.mean(-1), in floats")
    return f"right on {len(cases)} inputs, balanced, collapsed and stacked loads included"


# ---------------------------------------------------------------- 06.2
def reference_bias_update(bias: torch.Tensor, counts: torch.Tensor, gamma: float) -> torch.Tensor:
    """One aux-loss-free step per layer: bias + gamma * sign(mean load - load); bias and counts (L, E) or (E,)."""
    load = counts.float()
    return bias + gamma * torch.sign(load.mean(dim=-1, keepdim=True) - load)


def _bias_cases() -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    g = torch.Generator().manual_seed(62)
    counts = torch.tensor([[40, 4, 16, 4], [10, 2, 30, 22]])  # (L=2, E=4); each row sums to 64, one expert at its mean
    return [
        (torch.zeros(2, 4), counts, 0.01),
        (torch.randn(3, 8, generator=g) * 0.1, torch.randint(0, 40, (3, 8), generator=g), 0.003),
        (torch.tensor([0.2, -0.1, 0.0, 0.05]), torch.tensor([5, 9, 1, 1]), 0.5),  # one layer, (E,)
    ]


@checker("06.2", "bias_update", may_modify=(0, "bias"))  # DeepSeek updates the bias in place
def check_bias_update(bias_update: Answer) -> str:
    """Exercise 06.2: bias_update(bias, counts, gamma) -> new bias; one aux-loss-free step per layer (row)."""

    for bias, counts, gamma in _bias_cases():
        want = reference_bias_update(bias, counts, gamma)
        before = bias.clone()
        out = _call_on_counts(bias_update, bias, counts, gamma)
        if out is None:
            raise _Fail("your function returned None. Hint: return the new bias (bias + the step)")
        got = _expect_tensor(out, want.shape, f"the new bias for counts of shape {tuple(counts.shape)}")
        got = got.detach().float()
        label = f"for counts {counts.tolist()}, gamma {gamma}"
        if _close(got, want):
            continue
        load = counts.float()
        row_mean = load.mean(-1, keepdim=True)  # (L, 1) or (1,)
        mistakes = [
            (before - gamma * torch.sign(row_mean - load),
             "the sign is reversed: you made overloaded experts MORE attractive. Hint: an expert above the mean "
             "load must LOSE bias: b_i += gamma * sign(mean - load_i)"),
            (before + gamma * torch.sign(load.mean(0, keepdim=True) - load) if load.dim() == 2 else None,
             "you took the mean over the layers (dim 0). Hint: compare each expert with the mean "
             "load of ITS layer: mean over the experts, dim=-1, keepdim=True"),
            (before + gamma * torch.sign(load.mean() - load) if load.dim() == 2 else None,
             "you compared every expert with one mean over all layers (counts.mean()). Hint: each layer has "
             "its own router and its own load: compare each expert with the mean load of ITS layer, "
             "counts.mean(dim=-1, keepdim=True)"),
            (before, "the bias did not move. Hint: add gamma * sign(mean - load) to it"),
            (before + gamma * (row_mean - load),
             "the step is proportional to the imbalance. Hint: DeepSeek moves every bias by exactly gamma, "
             "up or down: use torch.sign(mean - load)"),
            (before + gamma * torch.where(load > row_mean, -1.0, 1.0),
             "an expert exactly at the mean load moved. Hint: torch.sign gives 0 there, so its bias stays"),
            (before + gamma * torch.sign(row_mean - load) / load.shape[-1],
             "each step is gamma divided by the number of experts. Hint: the step is gamma itself"),
        ]
        diagnose(got, mistakes, prefix=f"{label}: ")
        raise _Fail(f"{label}: {_compare(got, want)}. "
                    "Hint: bias + gamma * torch.sign(counts.mean(-1, keepdim=True) - counts), in floats")
    return "one step per layer: overloaded experts lose gamma, underloaded gain gamma, the mean stays"


# ---------------------------------------------------------------- 06.3
def reference_seq_balance_loss(scores: torch.Tensor, indices: torch.Tensor, alpha: float) -> torch.Tensor:
    """V3's sequence-wise balance loss for scores (B, T, E) and chosen experts indices (B, T, k): a scalar."""
    return sequence_balance_loss(scores, indices, alpha)


def _loss_inputs(B: int, T: int, E: int, k: int, seed: int, skew: float):
    """Sigmoid affinities with a per-sequence preference, and the top-k experts chosen from them."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, E, generator=g) + skew * torch.randn(B, 1, E, generator=g)  # (B, T, E)
    scores = logits.sigmoid()  # (B, T, E): rows do not sum to one
    return scores, scores.topk(k, dim=-1).indices  # (B, T, k)


def _loss_variants(scores: torch.Tensor, indices: torch.Tensor, alpha: float) -> list[tuple[torch.Tensor, str]]:
    """What typical mistakes compute, each with its hint."""
    B, T, E = scores.shape
    k = indices.shape[-1]
    s = scores.float()
    norm = s / s.sum(-1, keepdim=True)  # (B, T, E)
    counts = torch.zeros(B, E).scatter_add_(1, indices.reshape(B, T * k), torch.ones(B, T * k))  # (B, E)
    P = norm.mean(1)  # (B, E)
    ref = alpha * ((E / (k * T)) * counts * P).sum(-1).mean()
    flat_counts = counts.sum(0)  # (E,): the whole batch as one sequence
    batch = alpha * ((E / (k * T * B)) * flat_counts * norm.reshape(B * T, E).mean(0)).sum()
    return [
        (ref * (k * T) / E, "f_i is missing its factor N_r / (K_r T). Hint: f_i = E / (k T) x (tokens of the "
                            "sequence that chose expert i), so that f_i = 1 for every expert at perfect balance"),
        (ref * k, "f_i is divided by T but not by K_r. Hint: f_i = E / (k T) x count: each token makes k choices"),
        (ref / E, "f_i is the share of choices, count / (k T), without the factor N_r. Hint: multiply by E, "
                      "the number of routed experts, so balance gives f_i = 1"),
        (alpha * ((E / (k * T)) * counts * s.mean(1)).sum(-1).mean(),
         "P_i uses the raw affinities. Hint: V3 normalises each token's affinities to sum to one first: "
         "s_i / sum_j s_j (sigmoid scores do not sum to one; this is V2's expert-level loss)"),
        (batch, "you treated the whole batch as one sequence. Hint: compute f and P per sequence (over T), "
                "the loss of each sequence, then the mean over the B sequences"),
        (ref / alpha, "alpha is missing. Hint: multiply by alpha"),
        (((E / (k * T)) * counts * P).sum(-1).sum() * alpha, "you summed the sequences' losses. Hint: take the "
                                                             "mean over the batch"),
    ]


@checker("06.3", "seq_balance_loss")
def check_seq_balance_loss(seq_balance_loss: Answer) -> str:
    """Exercise 06.3: seq_balance_loss(scores (B, T, E), indices (B, T, k), alpha) -> V3's sequence-wise loss."""

    cases = [(4, 12, 8, 2, 63, 2.0, 0.01), (3, 7, 16, 3, 64, 3.0, 0.1), (2, 5, 6, 1, 65, 1.0, 1.0)]
    for B, T, E, k, seed, skew, alpha in cases:
        scores, indices = _loss_inputs(B, T, E, k, seed, skew)
        want = reference_seq_balance_loss(scores, indices, alpha)
        leaf = scores.clone().requires_grad_(True)
        out = seq_balance_loss(leaf, indices, alpha)
        got = _as_float_tensor(out, "the loss")
        label = f"for B={B} sequences of T={T} tokens, E={E} experts, k={k}, alpha={alpha}"
        if got.numel() != 1:
            raise _Fail(f"{label} the loss has shape {tuple(got.shape)}; expected a scalar. "
                        "Hint: average the per-sequence losses over the batch")
        got = got.reshape(())
        if not _close(got, want):
            diagnose(got, _loss_variants(scores, indices, alpha), same=lambda a, b: _close(a, b.reshape(())),
                     prefix=f"{label} you get {got.item():.5f}; expected {want.item():.5f}: ")
            raise _Fail(f"{label} you get {got.item():.5f}; expected {want.item():.5f}. Hint: per sequence, "
                        "f_i = E / (k T) x count of tokens choosing i and P_i = mean over t of s_i / sum_j s_j; "
                        "loss = alpha x mean over sequences of sum_i f_i P_i")
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            raise _Fail(f"{label} the value is right but no gradient reaches the scores. Hint: keep P_i a "
                        "differentiable function of the scores (no .item(), .detach() or torch.no_grad())")
        (grad,) = torch.autograd.grad(out.reshape(()), leaf)
        want_grad = torch.autograd.grad(reference_seq_balance_loss(leaf, indices, alpha), leaf)[0]
        if not _close(grad, want_grad, atol=1e-6, rtol=1e-3):
            raise _Fail(f"{label} the value is right but its gradient is not. Hint: the gradient flows through "
                        "P_i only; f_i is a count")
    return f"value and gradient match on {len(cases)} batches"


__all__ = [
    "reference_max_violation", "check_max_violation", "reference_bias_update", "check_bias_update",
    "reference_seq_balance_loss", "check_seq_balance_loss",
]
