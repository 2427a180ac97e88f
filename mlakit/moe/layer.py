"""The DeepSeekMoE layer: shared experts plus routed experts behind a router.

One MoE layer (DeepSeek-V2 §2.2, arXiv 2405.04434; DeepSeek-V3 §2.1.2, arXiv
2412.19437) computes

    h'_t = sum_shared FFN_s(u_t) + sum_{i in TopK} g_{i,t} FFN_i(u_t)

(the residual u_t is added by the block, as in transformers' DeepseekV3MoE).
The router is :class:`mlakit.moe.Router`, the routed experts
:class:`mlakit.moe.RoutedExperts`; the shared experts are one dense SwiGLU of
width ``moe_intermediate_size * n_shared_experts`` that every token runs through.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..config import ModelConfig
from ..kernels.moe_experts import check_dispatch
from ..kernels.registry import check_backend
from ..layers import SwiGLU
from .balance import V3_BIAS_UPDATE_SPEED
from .experts import RoutedExperts
from .router import Router


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

    The routed experts run through the kernel op :func:`mlakit.kernels.moe_experts`:
    ``dispatch`` ("loop" or "sorted") is the strategy of its torch backend,
    ``backend`` ("torch", "triton" or "auto") the implementation; both are
    attributes, set here or by :func:`mlakit.kernels.set_backend`, and
    overridable per call. ``seed`` is the routed experts' base seed (see
    :class:`RoutedExperts`; None draws it from torch's global generator).
    """

    kernel_ops = ("moe_experts",)

    def __init__(self, config: ModelConfig, dispatch: str = "sorted", backend: str = "auto",
                 seed: int | None = None):
        super().__init__()
        self.config = config
        self.dispatch, self.backend = check_dispatch(dispatch), check_backend(backend)  # fail early on a bad name
        self.gate = Router(config)
        self.experts = RoutedExperts(config, seed=seed)
        shared = config.moe_intermediate_size * config.n_shared_experts
        self.shared_experts = SwiGLU(config.hidden_size, shared) if shared else None

    def forward(self, x: torch.Tensor, dispatch: str | None = None, return_routing: bool = False, *,
                backend: str | None = None):
        """x (..., H) -> (..., H); with ``return_routing`` the pair (output, :class:`RouterOutput`).

        ``dispatch`` and ``backend`` override the layer's for this call.
        """
        tokens = x.reshape(-1, x.shape[-1])  # (N, H), N = B*T
        routing = self.gate(tokens)
        routed = self.experts(tokens, routing.weights, routing.indices, dispatch or self.dispatch,
                              backend or self.backend)  # (N, H)
        out = routed.view(x.shape)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return (out, routing) if return_routing else out

    def update_bias(self, counts: torch.Tensor, gamma: float = V3_BIAS_UPDATE_SPEED) -> None:
        """:meth:`Router.update_bias` with the expert loads ``counts`` (E,) of a step."""
        self.gate.update_bias(counts, gamma)


def iter_moe_layers(model: nn.Module) -> Iterable[DeepSeekMoE]:
    """Every DeepSeekMoE layer of ``model``, in module order."""
    return (m for m in model.modules() if isinstance(m, DeepSeekMoE))


__all__ = ["DeepSeekMoE", "iter_moe_layers"]
