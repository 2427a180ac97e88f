"""Routed experts of DeepSeekMoE, stored stacked, and the strategies that dispatch tokens to them.

DeepSeekMoE (DeepSeek-V2 §2.2, arXiv 2405.04434; DeepSeek-V3 §2.1.2, arXiv
2412.19437) splits the FFN into many fine-grained SwiGLU experts; each token
runs through the k its router chose. :class:`RoutedExperts` stores them stacked
with the expert first, in transformers' in-memory layout: ``gate_up_proj``
(E, 2I, H), expert j's gate rows then its up rows, and ``down_proj`` (E, H, I).
Why stacked and fused:

- a grouped GEMM consumes one weight tensor plus offsets, and fused-MoE
  kernels run gate and up as ONE grouped GEMM (the "w13" of open-source
  servers), so the future Triton path needs no reshuffling;
- each expert does one (2I x H) matmul instead of two (I x H) ones;
- the layer's state dict is key for key and shape for shape the state dict of
  transformers' DeepseekV3MoE, so weights move with ``load_state_dict``;
  :mod:`mlakit.moe.layout` maps it 1:1 to the per-expert on-disk names.

Dispatch (``dispatch=`` and ``backend=``): the routed-experts computation
is the kernel op :func:`mlakit.kernels.moe_experts`, the one dispatch point.
Its torch backend has the two strategies lesson 05 teaches, equal in outputs
and gradients: ``"loop"``, the readable reference (per expert, gather its
tokens, run it, scatter the weighted result back), and ``"sorted"``, the
default (slots sorted by expert, one segment per expert, one fused weighted
combine, bitwise reproducible; :class:`GroupedSwiGLU`); a Triton backend
(``backend="triton"``) implements the sorted strategy. :func:`dispatch_loop`
and :func:`dispatch_sorted` run one strategy on a :class:`RoutedExperts`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import MappingProxyType

import torch
from torch import nn

from ..config import ModelConfig
from ..kernels.moe_experts import (
    DISPATCHES,
    GroupedSwiGLU,
    check_dispatch,
    moe_experts,
    sort_by_expert,
    swiglu,
)


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
                dispatch: str = "sorted", backend: str = "auto") -> torch.Tensor:
        """sum_k weights[t, k] * expert_{indices[t, k]}(x[t]) for x (T, H), weights and indices (T, k).

        Runs :func:`mlakit.kernels.moe_experts` with strategy ``dispatch`` on ``backend``.
        """
        return moe_experts(x, weights, indices, self.gate_up_proj, self.down_proj, backend=backend, dispatch=dispatch)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, hidden={self.hidden_size}, intermediate={self.intermediate_size}"


def dispatch_loop(experts: RoutedExperts, x: torch.Tensor, weights: torch.Tensor,
                  indices: torch.Tensor) -> torch.Tensor:
    """Reference dispatch: per expert, gather its tokens, run it, add the weighted result back (torch backend)."""
    return experts(x, weights, indices, dispatch="loop", backend="torch")


def dispatch_sorted(experts: RoutedExperts, x: torch.Tensor, weights: torch.Tensor,
                    indices: torch.Tensor) -> torch.Tensor:
    """Sorted dispatch: slots sorted by expert, each expert on its segment, one fused weighted combine (torch backend)."""
    return experts(x, weights, indices, dispatch="sorted", backend="torch")


# the strategies as functions of a RoutedExperts (lesson 05); kernels register in mlakit.kernels, not here
DISPATCH_FUNCTIONS: MappingProxyType[str, Callable[..., torch.Tensor]] = MappingProxyType(
    {"loop": dispatch_loop, "sorted": dispatch_sorted})


def get_dispatch(name: str) -> Callable[..., torch.Tensor]:
    """The dispatch function called ``name`` ("loop" or "sorted"); ValueError for other names."""
    return DISPATCH_FUNCTIONS[check_dispatch(name)]


__all__ = ["RoutedExperts", "swiglu", "dispatch_loop", "dispatch_sorted", "sort_by_expert", "GroupedSwiGLU",
           "get_dispatch", "DISPATCH_FUNCTIONS", "DISPATCHES"]
