"""Load balancing of DeepSeekMoE: the auxiliary losses, MaxVio and a load tracker.

Three ways to keep routed experts evenly loaded, side by side in lesson 06:

- aux-loss-free balancing ("Auxiliary-Loss-Free Load Balancing Strategy for
  Mixture-of-Experts", arXiv 2408.15664; DeepSeek-V3 §2.1.2): a bias b_i added
  to the affinities for selection only, moved by b_i += gamma sign(mean load -
  load_i) after each step (:meth:`mlakit.moe.Router.update_bias`, gamma
  :data:`V3_BIAS_UPDATE_SPEED`);
- :func:`sequence_balance_loss`: V3's complementary sequence-wise loss
  (§2.1.2, eqs. 17-20), alpha * sum_i f_i P_i per sequence, with affinities
  normalised per token;
- :func:`expert_balance_loss`: V2's expert-level loss (arXiv 2405.04434
  §2.2.3), the same with the raw affinities.

:func:`max_violation` is the balance metric MaxVio of arXiv 2408.15664, and
:class:`LoadTracker` keeps the load of every layer at every step for heatmaps.
The balance loss of a whole model's routing is :func:`mlakit.losses.balance_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

V3_BIAS_UPDATE_SPEED = 0.001  # gamma of V3 for most of pre-training (0 for the last 500B tokens)
V3_SEQ_BALANCE_ALPHA = 0.0001  # alpha of V3's complementary sequence-wise balance loss
V2_EXPERT_BALANCE_ALPHA = 0.003  # alpha_1 of V2's expert-level balance loss


def _balance_loss(scores: torch.Tensor, indices: torch.Tensor, alpha: float, seq_len: int | None,
                  normalise: bool) -> torch.Tensor:
    E, k = scores.shape[-1], indices.shape[-1]
    if scores.dim() == 3:  # (B, T, E) already split into sequences
        seq_len = scores.shape[1]
    N = scores.numel() // E
    seq_len = N if seq_len is None else seq_len
    if seq_len < 1 or N % seq_len:
        raise ValueError(f"seq_len={seq_len} does not divide the {N} tokens into whole sequences")
    B = N // seq_len
    s = scores.float().reshape(B, seq_len, E)  # (B, T, E)
    if normalise:
        s = s / s.sum(dim=-1, keepdim=True)  # s'_{i,t} = s_{i,t} / sum_j s_{j,t}
    P = s.mean(dim=1)  # (B, E) mean affinity per sequence
    chosen = indices.reshape(B, seq_len * k)  # (B, T*k)
    counts = torch.zeros(B, E, device=scores.device).scatter_add_(1, chosen, torch.ones_like(chosen, dtype=torch.float32))
    f = counts * (E / (k * seq_len))  # (B, E): 1 for every expert when perfectly balanced
    return alpha * (f * P).sum(dim=-1).mean()


def sequence_balance_loss(scores: torch.Tensor, indices: torch.Tensor, alpha: float = V3_SEQ_BALANCE_ALPHA,
                          seq_len: int | None = None) -> torch.Tensor:
    """V3's complementary sequence-wise balance loss, alpha * sum_i f_i P_i averaged over sequences.

    f_i = N_r / (K_r T) * (tokens of the sequence choosing i), P_i = mean over the
    sequence of s_{i,t} / sum_j s_{j,t}. ``scores`` (N, E) unbiased affinities
    and ``indices`` (N, k); the N rows are consecutive sequences of ``seq_len``
    tokens (None: one sequence). (B, T, E) / (B, T, k) inputs are also accepted.
    Gradients flow through P (the scores); f is a count.
    """
    return _balance_loss(scores, indices, alpha, seq_len, normalise=True)


def expert_balance_loss(scores: torch.Tensor, indices: torch.Tensor, alpha: float = V2_EXPERT_BALANCE_ALPHA,
                        seq_len: int | None = None) -> torch.Tensor:
    """V2's expert-level balance loss alpha_1 * sum_i f_i P_i, with P_i the mean of the raw affinities s_i.

    Same f_i and shapes as :func:`sequence_balance_loss`. V2's softmax affinities
    already sum to one per token, so for softmax scoring the two losses agree.
    """
    return _balance_loss(scores, indices, alpha, seq_len, normalise=False)


def max_violation(counts: torch.Tensor) -> torch.Tensor:
    """MaxVio = max_i (load_i - mean load) / mean load over the last dim (arXiv 2408.15664).

    counts (..., E) -> (...,) float. 0 is perfect balance; E - 1 means one
    expert took every token. No tokens at all (mean 0) gives 0.
    """
    load = counts.float()
    mean = load.mean(dim=-1)  # (...,)
    vio = (load.amax(dim=-1) - mean) / mean.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(mean > 0, vio, torch.zeros_like(vio))


class LoadTracker:
    """Per-expert load per training step per MoE layer, for heatmaps and MaxVio curves.

    ``record(counts)`` once per step with (L, E) counts (or a list of L (E,)
    tensors, or one (E,) tensor for a single layer); ``history`` is (steps, L, E).
    """

    def __init__(self) -> None:
        self._steps: list[torch.Tensor] = []

    def record(self, counts: torch.Tensor | Sequence[torch.Tensor]) -> None:
        if not isinstance(counts, torch.Tensor):
            counts = torch.stack([torch.as_tensor(c) for c in counts])
        counts = counts.detach().to("cpu", torch.float32)
        counts = counts[None] if counts.dim() == 1 else counts  # (L, E)
        if counts.dim() != 2:
            raise ValueError(f"LoadTracker.record expects (layers, experts) counts, got shape {tuple(counts.shape)}")
        if self._steps and counts.shape != self._steps[0].shape:
            raise ValueError(f"LoadTracker.record got shape {tuple(counts.shape)}, "
                             f"but earlier steps had {tuple(self._steps[0].shape)}")
        self._steps.append(counts)

    @property
    def history(self) -> torch.Tensor:
        """(steps, L, E) float32 loads."""
        if not self._steps:
            return torch.zeros(0, 0, 0)
        return torch.stack(self._steps)

    def max_violation(self) -> torch.Tensor:
        """(steps, L) MaxVio of every layer at every step."""
        return max_violation(self.history)

    def __len__(self) -> int:
        return len(self._steps)


__all__ = ["sequence_balance_loss", "expert_balance_loss", "max_violation", "LoadTracker",
           "V3_BIAS_UPDATE_SPEED", "V3_SEQ_BALANCE_ALPHA", "V2_EXPERT_BALANCE_ALPHA"]
