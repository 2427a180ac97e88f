"""DeepSeekMoE: fine-grained routed experts, shared experts, group-limited routing, balancing.

Follows DeepSeek-V2 §2.2 (arXiv 2405.04434), DeepSeek-V3 §2.1.2 (arXiv 2412.19437)
and "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts"
(arXiv 2408.15664). One MoE layer computes

    h'_t = sum_shared FFN_s(u_t) + sum_{i in TopK} g_{i,t} FFN_i(u_t)

One concept per module:

| module | holds |
|---|---|
| :mod:`~mlakit.moe.router` | :class:`Router` (affinities, group-limited top-k with the balancing bias, gate weights), :class:`RouterOutput` |
| :mod:`~mlakit.moe.experts` | :class:`RoutedExperts` (stacked SwiGLU experts, one seed each, a slice for expert parallelism) and the dispatch strategies (through :func:`mlakit.kernels.moe_experts`) |
| :mod:`~mlakit.moe.layer` | :class:`DeepSeekMoE` (router + routed + shared experts), :func:`iter_moe_layers` |
| :mod:`~mlakit.moe.balance` | aux-loss-free bias constants, V3's sequence-wise and V2's expert-level balance losses, MaxVio, :class:`LoadTracker` |
| :mod:`~mlakit.moe.layout` | stacked <-> per-expert (on-disk) state dicts |

Every public name is importable from ``mlakit.moe`` directly.
"""

from .balance import (
    V2_EXPERT_BALANCE_ALPHA,
    V3_BIAS_UPDATE_SPEED,
    V3_SEQ_BALANCE_ALPHA,
    LoadTracker,
    expert_balance_loss,
    max_violation,
    sequence_balance_loss,
)
from .experts import (
    DISPATCH_FUNCTIONS,
    GroupedSwiGLU,
    RoutedExperts,
    dispatch_loop,
    dispatch_sorted,
    expert_seed,
    get_dispatch,
    sort_by_expert,
    swiglu,
)
from .layer import DeepSeekMoE, iter_moe_layers
from .layout import from_per_expert_state_dict, to_per_expert_state_dict
from .router import GROUP_SCORES, GROUP_TOP, NORM_EPS, Router, RouterOutput

__all__ = [
    "Router", "RouterOutput", "RoutedExperts", "DeepSeekMoE", "swiglu", "dispatch_loop", "dispatch_sorted",
    "sort_by_expert", "GroupedSwiGLU", "get_dispatch", "DISPATCH_FUNCTIONS", "sequence_balance_loss",
    "expert_balance_loss", "max_violation", "LoadTracker", "to_per_expert_state_dict",
    "from_per_expert_state_dict", "iter_moe_layers", "V3_BIAS_UPDATE_SPEED",
    "V3_SEQ_BALANCE_ALPHA", "V2_EXPERT_BALANCE_ALPHA", "GROUP_TOP", "NORM_EPS", "GROUP_SCORES", "expert_seed",
]
