"""DeepSeekMoE: fine-grained routed experts, shared experts, group-limited routing, balancing.

Follows DeepSeek-V2 §2.2 (arXiv 2405.04434), DeepSeek-V3 §2.1.2 (arXiv 2412.19437)
and "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts"
(arXiv 2408.15664). One MoE layer computes

    h'_t = sum_shared FFN_s(u_t) + sum_{i in TopK} g_{i,t} FFN_i(u_t)

(the residual u_t is added by the block, as in transformers' DeepseekV3MoE).

Router (:class:`Router`, float32 throughout, as the released models):

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
  ``routed_scaling_factor``. Like transformers we renormalise at every k
  (DeepSeek's code skips k = 1). Simplification: V2's released code skips the
  scaling factor when it renormalises; no released V2 model renormalises
  (``norm_topk_prob=False``), so we always scale, as V3 and transformers do.

Experts (:class:`RoutedExperts`) are stored stacked with the expert first, in
transformers' in-memory layout: ``gate_up_proj`` (E, 2I, H), expert j's gate
rows then its up rows, and ``down_proj`` (E, H, I). Why stacked and fused:

- a grouped GEMM consumes one weight tensor plus offsets, and fused-MoE
  kernels run gate and up as ONE grouped GEMM (the "w13" of open-source
  servers), so the future Triton path needs no reshuffling;
- each expert does one (2I x H) matmul instead of two (I x H) ones;
- the layer's state dict is key for key and shape for shape the state dict of
  transformers' DeepseekV3MoE, so weights move with ``load_state_dict``;
- :func:`to_per_expert_state_dict` / :func:`from_per_expert_state_dict` map it
  1:1 to the on-disk names ``experts.{j}.gate_proj.weight`` (rows [0, I) of
  ``gate_up_proj[j]``), ``experts.{j}.up_proj.weight`` (rows [I, 2I)) and
  ``experts.{j}.down_proj.weight``.

Dispatch strategies, equal in outputs and gradients (``dispatch=``):

- ``"loop"``: the readable reference: for each expert gather its tokens, run
  it, scatter the weighted result back;
- ``"sorted"`` (the default): sort the (token, k) slots by expert with a
  stable argsort, run each expert on its contiguous segment and combine with
  one fused weighted gather-sum (:class:`GroupedSwiGLU`, forward and backward
  written out, the one place a grouped GEMM plugs in): no atomics, so results
  are bitwise reproducible;
- ``"triton"``: reserved for a Triton grouped GEMM; not available yet (a
  kernel registers itself in ``DISPATCH_FUNCTIONS``).

On a CPU each segment is still its own matmul, so what separates the
strategies is data movement: the sorted path reads each expert's tokens
straight into its matmul, writes its results into one preallocated buffer and
un-permutes, weights and sums them in one ``embedding_bag``, which puts it
within about 1.2x of a dense SwiGLU over the same rows and ahead of the loop
(bench/moe_dispatch.py). ``torch.nn.functional.grouped_mm`` runs on CPU in
torch 2.13 but is documented for bf16 on CUDA SM80+, needs 16-byte aligned
strides and its backward fails on zero-stride gradients, so it is not used.

Balancing: :meth:`Router.update_bias` (aux-loss-free, b_i += gamma sign(mean
load - load_i)), :func:`sequence_balance_loss` (V3's complementary loss),
:func:`expert_balance_loss` (V2's expert-level loss), :func:`max_violation`
(MaxVio) and :class:`LoadTracker` (load per step per layer, for heatmaps).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import SwiGLU

GROUP_TOP = 2  # V3 scores a group by the sum of its 2 largest biased affinities
NORM_EPS = 1e-20  # added to the sum of the chosen k weights before renormalising (transformers, DeepSeek code)
GROUP_SCORES = {"sigmoid": "top2_sum", "softmax": "max"}  # group score of each model's released code
V3_BIAS_UPDATE_SPEED = 0.001  # gamma of V3 for most of pre-training (0 for the last 500B tokens)
V3_SEQ_BALANCE_ALPHA = 0.0001  # alpha of V3's complementary sequence-wise balance loss
V2_EXPERT_BALANCE_ALPHA = 0.003  # alpha_1 of V2's expert-level balance loss
PLANNED_DISPATCHES = {"triton": "a Triton grouped GEMM"}  # registered in DISPATCH_FUNCTIONS when built


# ------------------------------------------------------------------ router
@dataclass
class RouterOutput:
    """What the router decided for T tokens over E experts, choosing k each."""

    weights: torch.Tensor  # (T, k) float32 gate weights g: unbiased, renormalised if asked, times the scaling factor
    indices: torch.Tensor  # (T, k) int64 chosen experts, highest biased score first
    counts: torch.Tensor  # (E,) int64 tokens routed to each expert (the load)
    scores: torch.Tensor  # (T, E) float32 unbiased affinities s, differentiable (the balance losses use them)


class Router(nn.Module):
    """The gate: affinities, group-limited top-k selection with the balancing bias, gate weights.

    ``weight`` (E, H) and the float32 buffer ``e_score_correction_bias`` (E,)
    carry transformers' names (``mlp.gate.weight``, ``mlp.gate.e_score_correction_bias``).
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


# ----------------------------------------------------------------- experts
def swiglu(x: torch.Tensor, gate_up_w: torch.Tensor, down_w: torch.Tensor) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)), the formula of :class:`mlakit.layers.SwiGLU`, with gate and up fused.

    ``gate_up_w`` (2I, H) holds the gate rows first, then the up rows; ``down_w`` is (H, I).
    """
    gate, up = F.linear(x, gate_up_w).chunk(2, dim=-1)  # (n, 2I) -> (n, I), (n, I)
    return F.linear(F.silu(gate) * up, down_w)


class RoutedExperts(nn.Module):
    """E SwiGLU experts of width I, stacked: ``gate_up_proj`` (E, 2I, H) gate rows first, ``down_proj`` (E, H, I)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        E, H, I = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.num_experts, self.hidden_size, self.intermediate_size = E, H, I
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H))
        self.down_proj = nn.Parameter(torch.empty(E, H, I))
        for w, fan_in in ((self.gate_up_proj, H), (self.down_proj, I)):
            nn.init.uniform_(w, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))  # nn.Linear's default, per expert

    def per_expert(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(gate_up, down) weight views of each expert.

        ``unbind`` rather than indexing in a loop: its backward stacks the E
        gradients once instead of building a full-size zero tensor per expert.
        """
        return list(zip(self.gate_up_proj.unbind(0), self.down_proj.unbind(0), strict=True))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                dispatch: str = "sorted") -> torch.Tensor:
        """sum_k weights[t, k] * expert_{indices[t, k]}(x[t]) for x (T, H), weights and indices (T, k)."""
        return get_dispatch(dispatch)(self, x, weights, indices)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, hidden={self.hidden_size}, intermediate={self.intermediate_size}"


# ---------------------------------------------------------------- dispatch
def dispatch_loop(experts: RoutedExperts, x: torch.Tensor, weights: torch.Tensor,
                  indices: torch.Tensor) -> torch.Tensor:
    """Reference dispatch: per expert, gather its tokens, run it, add the weighted result back."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # (T, H) accumulated in float32
    for e, (gate_up_w, down_w) in enumerate(experts.per_expert()):
        token_idx, slot = torch.where(indices == e)  # tokens that chose e, and in which of their k slots
        if token_idx.numel() == 0:
            continue
        y = swiglu(x[token_idx], gate_up_w, down_w)  # (n_e, H)
        # a token picks an expert at most once, so token_idx has no repeats: no accumulation race
        out.index_add_(0, token_idx, y.float() * weights[token_idx, slot, None])
    return out.to(x.dtype)


def sort_by_expert(indices: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation of the T*k slots (slot = t * k + j) grouping them by expert, and the counts (E,).

    The argsort is stable, so within an expert the slots stay in token order and
    the permutation depends only on the routing, never on the hardware.
    """
    flat = indices.reshape(-1)  # (T*k,)
    order = torch.argsort(flat, stable=True)  # (T*k,)
    return order, torch.bincount(flat, minlength=num_experts)


class GroupedSwiGLU(torch.autograd.Function):
    """Every expert on its contiguous segment of expert-sorted rows, then the gate-weighted combine.

    ``forward(x, weights, gate_up_proj, down_proj, order, sizes)``: x (T, H)
    tokens, weights (T, k) gate weights, the stacked expert weights, ``order``
    (T*k,) the slots sorted by expert and ``sizes`` (a list of E ints) the
    segment lengths. Returns (T, H) = sum_j weights[t, j] * expert_{e(t, j)}(x[t]).

    This is the grouped GEMM of fused-MoE kernels written with torch ops, with
    the data movement kept to what the computation needs:

    - each expert reads its tokens with one ``index_select`` straight into its
      matmul (no full-size gathered copy of the batch);
    - its down projection writes into its segment of one preallocated (T*k, H)
      buffer (``out=``: no list of pieces, no ``cat``);
    - un-permuting, weighting and summing the k rows of each token is ONE
      ``embedding_bag`` (mode "sum" with per-sample weights), a fused
      gather-and-reduce: each output row is the sum of its k rows in slot order,
      with no atomics and no scatter, so results are bitwise reproducible.

    The backward is written out the same way (per segment: the upstream rows of
    its tokens, the SwiGLU derivative, the weight gradients as two matmuls, the
    input gradient into a sorted buffer combined by ``embedding_bag``). It saves
    the (T*k, 2I) gate/up activations and the (T*k, H) expert outputs. A Triton
    grouped GEMM replaces exactly this function.
    """

    @staticmethod
    def forward(ctx, x, weights, gate_up_proj, down_proj, order, sizes, reuse_buffers=False):
        T, k = weights.shape
        token_of = order // k  # (T*k,): the token of each sorted row
        positions = torch.empty_like(order)
        positions[order] = torch.arange(order.numel(), device=order.device)
        positions = positions.view(T, k)  # sorted row of slot (t, j)
        new = _workspace if reuse_buffers else (lambda name, shape, like: like.new_empty(shape))
        gate_up = new("gate_up", (order.numel(), gate_up_proj.shape[1]), x)  # (T*k, 2I)
        y = new("y", (order.numel(), x.shape[1]), x)  # (T*k, H) expert outputs, expert order
        for e, (a, b) in _segments(sizes):
            torch.mm(x.index_select(0, token_of[a:b]), gate_up_proj[e].t(), out=gate_up[a:b])
            gate, up = gate_up[a:b].chunk(2, dim=-1)  # (n_e, I) each
            torch.mm(F.silu(gate) * up, down_proj[e].t(), out=y[a:b])
        out = F.embedding_bag(positions, y, mode="sum", per_sample_weights=weights.to(y.dtype))  # (T, H)
        ctx.save_for_backward(x, weights, gate_up_proj, down_proj, order, positions, gate_up, y)
        ctx.sizes = sizes
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weights, gate_up_proj, down_proj, order, positions, gate_up, y = ctx.saved_tensors
        need_x, need_w, need_gu, need_down = ctx.needs_input_grad[:4]
        T, k = weights.shape
        token_of = order // k
        w_sorted = weights.reshape(-1)[order].to(y.dtype)[:, None]  # (T*k, 1)
        grad_out = grad_out.contiguous()
        grad_x_sorted = torch.empty_like(y) if need_x else None  # (T*k, H), combined like the forward
        grad_w_sorted = torch.empty(order.numel(), dtype=weights.dtype, device=weights.device) if need_w else None
        grad_gu = torch.zeros_like(gate_up_proj) if need_gu else None  # experts without tokens get zeros
        grad_down = torch.zeros_like(down_proj) if need_down else None
        for e, (a, b) in _segments(ctx.sizes):
            g_rows = grad_out.index_select(0, token_of[a:b])  # (n_e, H): upstream gradient of each row's token
            if need_w:
                grad_w_sorted[a:b] = torch.linalg.vecdot(g_rows, y[a:b]).to(weights.dtype)  # d out / d g = y
            gate, up = gate_up[a:b].chunk(2, dim=-1)
            sig = torch.sigmoid(gate)
            silu = gate * sig
            w = w_sorted[a:b]
            if need_down:
                grad_down[e] = g_rows.t() @ (silu * up * w)  # (H, I)
            grad_h = (g_rows @ down_proj[e]) * w  # (n_e, I): gradient at the SwiGLU product
            grad_gate_up = torch.cat([grad_h * up * sig * (1 + gate * (1 - sig)), grad_h * silu], dim=-1)  # (n_e, 2I)
            if need_gu:
                grad_gu[e] = grad_gate_up.t() @ x.index_select(0, token_of[a:b])  # (2I, H)
            if need_x:
                torch.mm(grad_gate_up, gate_up_proj[e], out=grad_x_sorted[a:b])
        grad_x = F.embedding_bag(positions, grad_x_sorted, mode="sum") if need_x else None  # (T, H)
        grad_w = None
        if need_w:
            grad_w = torch.empty_like(grad_w_sorted)
            grad_w[order] = grad_w_sorted
            grad_w = grad_w.view(T, k)
        return grad_x, grad_w, grad_gu, grad_down, None, None, None


_WORKSPACES = threading.local()  # per thread: {name: tensor}, buffers reused by inference-mode forwards


def _workspace(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer of ``shape`` that the next call with this name may overwrite.

    Only for forwards that keep nothing for a backward (no grad). A fresh buffer
    of tens of MB costs more to fault in page by page than the data movement it
    holds (the allocator returns large blocks to the OS on every free), so the
    expert outputs of the sorted path live in one buffer per thread, shared by
    all layers, grown when needed.
    """
    store = _WORKSPACES.__dict__
    numel = math.prod(shape)
    buf = store.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
        buf = store[name] = like.new_empty(numel)
    return buf[:numel].view(shape)


def _segments(sizes: Sequence[int]):
    """(expert, (start, end)) of each non-empty segment of the expert-sorted rows."""
    start = 0
    for e, n in enumerate(sizes):
        if n:
            yield e, (start, start + n)
        start += n


def dispatch_sorted(experts: RoutedExperts, x: torch.Tensor, weights: torch.Tensor,
                    indices: torch.Tensor) -> torch.Tensor:
    """Sorted dispatch: slots sorted by expert, each expert on its segment, one fused weighted combine."""
    if indices.numel() == 0:
        return torch.zeros_like(x)
    order, counts = sort_by_expert(indices, experts.num_experts)  # (T*k,), (E,)
    inference = not torch.is_grad_enabled()  # nothing is saved for a backward: reuse the big buffers
    return GroupedSwiGLU.apply(x, weights, experts.gate_up_proj, experts.down_proj, order, counts.tolist(), inference)


DISPATCH_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {"loop": dispatch_loop, "sorted": dispatch_sorted}


def get_dispatch(name: str) -> Callable[..., torch.Tensor]:
    """The dispatch function called ``name``; ValueError for unknown names, NotImplementedError for planned ones.

    A new strategy (the Triton grouped GEMM) registers itself in
    ``DISPATCH_FUNCTIONS`` with the signature of :func:`dispatch_sorted`.
    """
    if name in DISPATCH_FUNCTIONS:
        return DISPATCH_FUNCTIONS[name]
    available = ", ".join(DISPATCH_FUNCTIONS)
    if name in PLANNED_DISPATCHES:
        raise NotImplementedError(f"dispatch={name!r} ({PLANNED_DISPATCHES[name]}) is not available yet; "
                                  f"use one of {available}")
    raise ValueError(f"dispatch={name!r} is invalid: use one of {available}")


# -------------------------------------------------------------- the layer
class DeepSeekMoE(nn.Module):
    """Shared experts plus routed experts: forward(x) = shared(x) + sum_k g_k expert_k(x), shape of x.

    Names follow transformers' DeepseekV3MoE: ``gate`` (the router),
    ``experts`` (stacked; see :func:`to_per_expert_state_dict`),
    ``shared_experts`` (one SwiGLU of width moe_intermediate_size * n_shared_experts,
    None when n_shared_experts = 0). The layer keeps no state between calls:
    ``forward(x, return_routing=True)`` returns the routing decisions with the
    output, and the caller passes them to :func:`mlakit.losses.balance_loss` and
    :meth:`update_bias` (a rollout or a reference-model forward in between
    cannot overwrite them).
    """

    def __init__(self, config: ModelConfig, dispatch: str = "sorted"):
        super().__init__()
        get_dispatch(dispatch)  # fail early on a bad name
        self.config, self.dispatch = config, dispatch
        self.gate = Router(config)
        self.experts = RoutedExperts(config)
        shared = config.moe_intermediate_size * config.n_shared_experts
        self.shared_experts = SwiGLU(config.hidden_size, shared) if shared else None

    def forward(self, x: torch.Tensor, dispatch: str | None = None, return_routing: bool = False):
        """x (..., H) -> (..., H); with ``return_routing`` the pair (output, :class:`RouterOutput`)."""
        tokens = x.reshape(-1, x.shape[-1])  # (N, H), N = B*T
        routing = self.gate(tokens)
        routed = self.experts(tokens, routing.weights, routing.indices, dispatch or self.dispatch)  # (N, H)
        out = routed.view(x.shape)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return (out, routing) if return_routing else out

    def update_bias(self, counts: torch.Tensor, gamma: float = V3_BIAS_UPDATE_SPEED) -> None:
        """:meth:`Router.update_bias` with the expert loads ``counts`` (E,) of a step."""
        self.gate.update_bias(counts, gamma)


# -------------------------------------------------------------- balancing
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


# ----------------------------------------------------------- weight layout
_STACKED_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)experts\.(?P<proj>gate_up_proj|down_proj)$")  # "." or start: not shared_experts
_PER_EXPERT_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)experts\.(?P<j>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")


def to_per_expert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stacked expert weights to transformers' on-disk per-expert names; other keys are kept.

    ``...experts.gate_up_proj`` (E, 2I, H) -> ``...experts.{j}.gate_proj.weight`` (I, H)
    and ``...experts.{j}.up_proj.weight`` (I, H); ``...experts.down_proj`` (E, H, I) ->
    ``...experts.{j}.down_proj.weight`` (H, I).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _STACKED_KEY.match(key)
        if m is None:
            out[key] = value
            continue
        for j, w in enumerate(value.unbind(0)):
            base = f"{m['prefix']}experts.{j}."
            if m["proj"] == "down_proj":
                out[base + "down_proj.weight"] = w.contiguous()
            else:
                gate, up = w.chunk(2, dim=0)  # (2I, H) -> (I, H), (I, H)
                out[base + "gate_proj.weight"], out[base + "up_proj.weight"] = gate.contiguous(), up.contiguous()
    return out


def from_per_expert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_per_expert_state_dict`: per-expert weights back to ``gate_up_proj`` / ``down_proj``."""
    out: dict[str, torch.Tensor] = {}
    found: dict[str, dict[tuple[str, int], torch.Tensor]] = {}  # prefix -> (proj, j) -> weight
    for key, value in state_dict.items():
        m = _PER_EXPERT_KEY.match(key)
        if m is None:
            out[key] = value
        else:
            found.setdefault(m["prefix"], {})[(m["proj"], int(m["j"]))] = value
    for prefix, weights in found.items():
        n = 1 + max(j for _, j in weights)
        missing = [f"{prefix}experts.{j}.{p}.weight" for j in range(n) for p in ("gate_proj", "up_proj", "down_proj")
                   if (p, j) not in weights]
        if missing:
            raise ValueError(f"per-expert weights incomplete: missing {', '.join(missing[:4])}"
                             + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
        out[f"{prefix}experts.gate_up_proj"] = torch.stack(
            [torch.cat([weights[("gate_proj", j)], weights[("up_proj", j)]]) for j in range(n)])  # (E, 2I, H)
        out[f"{prefix}experts.down_proj"] = torch.stack([weights[("down_proj", j)] for j in range(n)])  # (E, H, I)
    return out


def iter_moe_layers(model: nn.Module) -> Iterable[DeepSeekMoE]:
    """Every DeepSeekMoE layer of ``model``, in module order."""
    return (m for m in model.modules() if isinstance(m, DeepSeekMoE))


__all__ = [
    "Router", "RouterOutput", "RoutedExperts", "DeepSeekMoE", "swiglu", "dispatch_loop", "dispatch_sorted",
    "sort_by_expert", "GroupedSwiGLU", "get_dispatch", "DISPATCH_FUNCTIONS", "sequence_balance_loss",
    "expert_balance_loss", "max_violation", "LoadTracker", "to_per_expert_state_dict",
    "from_per_expert_state_dict", "iter_moe_layers", "V3_BIAS_UPDATE_SPEED",
    "V3_SEQ_BALANCE_ALPHA", "V2_EXPERT_BALANCE_ALPHA",
]
