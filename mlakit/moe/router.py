"""The DeepSeekMoE router: affinities, group-limited top-k with the balancing bias, gate weights.

Follows DeepSeek-V2 §2.2 (arXiv 2405.04434), DeepSeek-V3 §2.1.2 (arXiv 2412.19437)
and "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts"
(arXiv 2408.15664). Float32 throughout, as the released models:

- affinities s = sigmoid(u W^T) (V3, ``scoring_func="sigmoid"``) or
  softmax(u W^T) over all experts (V2, ``scoring_func="softmax"``);
- selection uses s + b, where b is the balancing bias
  ``e_score_correction_bias``; the bias steers selection only;
- group-limited routing (V2 "device-limited", V3 "node-limited"): experts are
  split into ``n_group`` groups; each group is scored, the best ``topk_group``
  groups are kept, the other experts are masked with -inf, then top-k.
  The group score follows the released code of each model:
  V3 (sigmoid) sums the group's top-2 biased affinities; V2 (softmax,
  ``topk_method="group_limited_greedy"``, also transformers'
  DeepseekV2TopkRouter) takes the group's maximum affinity: the V2 paper
  first selects the M devices that hold the experts with the highest affinity;
- gate weights g come from the UNBIASED s of the chosen experts, renormalised
  over the k chosen (+1e-20) when ``norm_topk_prob``, then times
  ``routed_scaling_factor``. We renormalise at every k, as DeepSeek-V3's
  inference code (``inference/model.py`` divides the sigmoid weights by their
  sum whatever k) and transformers do; only the modeling file published with
  the weights on the Hub (``modeling_deepseek.py``) skips it at k = 1.
  Simplification: V2's released code skips the scaling factor when it
  renormalises; no released V2 model renormalises (``norm_topk_prob=False``),
  so we always scale, as V3 and transformers do.

The bias is updated by :meth:`Router.update_bias` (aux-loss-free balancing,
b_i += gamma sign(mean load - load_i)); the loss-based alternatives are in
:mod:`mlakit.moe.balance`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .balance import V3_BIAS_UPDATE_SPEED

GROUP_TOP = 2  # V3 scores a group by the sum of its 2 largest biased affinities
NORM_EPS = 1e-20  # added to the sum of the chosen k weights before renormalising (transformers, the Hub's modeling_deepseek.py)
GROUP_SCORES = {"sigmoid": "top2_sum", "softmax": "max"}  # group score of each model's released code


@dataclass
class RouterOutput:
    """What the router decided for T tokens over E experts, choosing k each."""

    weights: torch.Tensor  # (T, k) float32 gate weights g: unbiased, renormalised if asked, times the scaling factor
    indices: torch.Tensor  # (T, k) int64 chosen experts, highest biased score first
    counts: torch.Tensor  # (E,) int64 tokens routed to each expert (the load)
    scores: torch.Tensor  # (T, E) float32 unbiased affinities s, differentiable (the balance losses use them)


class Router(nn.Module):
    """The gate: affinities, group-limited top-k selection with the balancing bias, gate weights.

    ``weight`` (E, H) and the buffer ``e_score_correction_bias`` (E,), float32
    whatever the model's dtype, carry transformers' names (``mlp.gate.weight``,
    ``mlp.gate.e_score_correction_bias``); the affinities are computed in float32.
    ``group_score`` is "top2_sum" (V3) or "max" (V2); None picks the one of the
    released model with this ``scoring_func`` (see the module docstring).
    """

    def __init__(self, config: ModelConfig, group_score: str | None = None):
        super().__init__()
        if config.n_routed_experts < 1:
            raise ValueError("Router needs n_routed_experts >= 1; got 0 (a dense model has no router)")
        group_score = GROUP_SCORES[config.scoring_func] if group_score is None else group_score
        if group_score not in GROUP_SCORES.values():
            raise ValueError(f"Router group_score={group_score!r} is invalid: use 'top2_sum' (V3) or 'max' (V2)")
        self.num_experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.scoring_func, self.group_score = config.scoring_func, group_score
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = float(config.routed_scaling_factor)
        self.weight = nn.Parameter(torch.empty(self.num_experts, config.hidden_size, dtype=torch.float32))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.num_experts, dtype=torch.float32))
        bound = 1 / math.sqrt(config.hidden_size)  # nn.Linear's default initialisation
        nn.init.uniform_(self.weight, -bound, bound)

    def _apply(self, fn, recurse=True):
        """Move the module as asked, but keep the balancing bias in float32 under any model dtype.

        ``model.to(torch.bfloat16)`` would otherwise cast the bias: bf16 keeps 8
        significant bits, so near |b| = 0.6 its spacing is 2^-8 = 0.0039, an
        update of gamma = 1e-3 rounds away and the bias stops moving
        (DeepSeek's code and transformers keep it in float32 too). The float32 original is moved instead of the cast
        copy, so no round trip through the narrow dtype rounds it either.
        """
        bias = self.e_score_correction_bias
        super()._apply(fn, recurse)
        moved = self.e_score_correction_bias
        if moved.dtype != torch.float32:
            keep = moved.float() if bias.is_meta and not moved.is_meta else bias.to(moved.device)
            self._buffers["e_score_correction_bias"] = keep
        return self

    def affinities(self, x: torch.Tensor) -> torch.Tensor:
        """Unbiased affinities s (T, E) in float32 for tokens x (T, H)."""
        logits = F.linear(x.float(), self.weight.float())  # (T, E)
        if self.scoring_func == "sigmoid":
            return logits.sigmoid()
        return logits.softmax(dim=-1)

    @torch.no_grad()
    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """Chosen experts (T, k), best first: group-limited top-k of the biased scores.

        Selection is not differentiable: gradients reach the router only
        through the gate weights.
        """
        biased = scores + self.e_score_correction_bias  # (T, E) selection scores s + b
        if self.n_group > 1:
            T, G = biased.shape[0], self.n_group
            grouped = biased.view(T, G, self.num_experts // G)  # (T, G, E/G)
            if self.group_score == "top2_sum":
                group_scores = grouped.topk(GROUP_TOP, dim=-1).values.sum(-1)  # (T, G)
            else:
                group_scores = grouped.amax(dim=-1)  # (T, G)
            kept = group_scores.topk(self.topk_group, dim=-1).indices  # (T, topk_group)
            group_mask = torch.zeros(T, G, dtype=torch.bool, device=biased.device).scatter_(1, kept, True)
            expert_mask = group_mask[:, :, None].expand_as(grouped).reshape(T, self.num_experts)  # (T, E)
            biased = biased.masked_fill(~expert_mask, float("-inf"))
        return biased.topk(self.top_k, dim=-1).indices  # (T, k)

    def gate_weights(self, scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """g (T, k): the unbiased affinities of the chosen experts, renormalised if asked, scaled."""
        weights = scores.gather(1, indices)  # (T, k)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + NORM_EPS)
        return weights * self.routed_scaling_factor

    def forward(self, x: torch.Tensor) -> RouterOutput:
        x = x.reshape(-1, x.shape[-1])  # (T, H): all tokens of the batch
        scores = self.affinities(x)  # (T, E)
        indices = self.select(scores)  # (T, k)
        counts = torch.bincount(indices.flatten(), minlength=self.num_experts)  # (E,)
        return RouterOutput(self.gate_weights(scores, indices), indices, counts, scores)

    @torch.no_grad()
    def update_bias(self, counts: torch.Tensor, gamma: float = V3_BIAS_UPDATE_SPEED) -> None:
        """Aux-loss-free balancing step (arXiv 2408.15664, V3 §2.1.2): b_i += gamma * sign(mean - load_i).

        Call after each optimizer step with the expert loads of the whole batch
        (summed over micro-batches and, in data parallel training, over ranks).
        Overloaded experts become less attractive, underloaded ones more;
        an expert exactly at the mean keeps its bias; gamma = 0 changes nothing.
        """
        if gamma < 0:
            raise ValueError(f"update_bias gamma={gamma!r} is invalid: must be >= 0 (the bias update speed)")
        load = counts.to(self.e_score_correction_bias.device, torch.float32)  # (E,)
        self.e_score_correction_bias += gamma * torch.sign(load.mean() - load)

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, top_k={self.top_k}, scoring={self.scoring_func}, "
                f"groups={self.topk_group}/{self.n_group} by {self.group_score}, "
                f"norm_topk_prob={self.norm_topk_prob}, scale={self.routed_scaling_factor}")


__all__ = ["Router", "RouterOutput", "GROUP_TOP", "NORM_EPS", "GROUP_SCORES"]
