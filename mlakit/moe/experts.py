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

Expert parallelism: a :class:`RoutedExperts` may hold a slice of the layer's
experts (``first_expert``, ``num_local_experts``), and each expert is
initialised from its own seed, so a slice built on another process holds the
same weights as those experts of the full layer.
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

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """SplitMix64's output function: a 64-bit integer to a well-mixed 64-bit integer."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def expert_seed(seed: int, expert: int) -> int:
    """The generator seed of global expert ``expert`` in a layer whose base seed is ``seed``.

    The base seed is mixed, then the expert index added: torch's CPU generator
    uses the low 32 bits of a seed, and consecutive values keep the experts of
    a layer apart there.
    """
    return (_splitmix64(seed & _MASK64) + expert) & ((1 << 63) - 1)


class RoutedExperts(nn.Module):
    """E SwiGLU experts of width I, stacked: ``gate_up_proj`` (E, 2I, H) gate rows first, ``down_proj`` (E, H, I).

    Holds ``num_local_experts`` experts from global index ``first_expert`` (all
    of the layer's by default; a slice for expert parallelism) and takes
    global expert ids: slot (t, j) runs expert ``indices[t, j]``, which must be
    one of this module's (a process only gets the slots routed to its experts).

    Initialisation: expert j's weights are drawn from its own generator, seeded
    by :func:`expert_seed` (``seed``, global j), so experts built alone on
    another process equal the same experts of the full layer; the distribution
    is nn.Linear's default, uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn on
    the CPU (the same weights on every device). ``seed`` None draws the base
    seed from torch's global generator, once per layer, so ``torch.manual_seed``
    still makes a model reproducible. Nothing is drawn on the meta device.
    """

    def __init__(self, config: ModelConfig, first_expert: int = 0, num_local_experts: int | None = None,
                 seed: int | None = None):
        super().__init__()
        E, H, I = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        n = E - first_expert if num_local_experts is None else num_local_experts
        if first_expert < 0 or n < 1 or first_expert + n > E:
            raise ValueError(f"RoutedExperts first_expert={first_expert}, num_local_experts={num_local_experts} "
                             f"is invalid: the experts [{first_expert}, {first_expert + n}) must lie in [0, {E})")
        self.num_experts, self.hidden_size, self.intermediate_size = E, H, I
        self.first_expert, self.num_local_experts = first_expert, n
        if seed is None:  # one draw per layer, whatever the slice: processes seeded alike agree on it
            seed = int(torch.randint(0, 2**62, (), device="cpu").item())
        self.seed = int(seed)
        self.gate_up_proj = nn.Parameter(torch.empty(n, 2 * I, H))
        self.down_proj = nn.Parameter(torch.empty(n, H, I))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw every local expert from its own generator (see the class docstring); a no-op on meta."""
        if self.gate_up_proj.is_meta:
            return
        for j in range(self.num_local_experts):
            generator = torch.Generator().manual_seed(expert_seed(self.seed, self.first_expert + j))
            for w, fan_in in ((self.gate_up_proj[j], self.hidden_size), (self.down_proj[j], self.intermediate_size)):
                bound = 1 / math.sqrt(fan_in)  # nn.Linear's default, per expert
                w.copy_(torch.empty(w.shape, dtype=w.dtype, device="cpu").uniform_(-bound, bound, generator=generator))

    def per_expert(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(gate_up, down) weight views of each expert.

        ``unbind`` rather than indexing in a loop: its backward stacks the E
        gradients once instead of building a full-size zero tensor per expert.
        """
        return list(zip(self.gate_up_proj.unbind(0), self.down_proj.unbind(0), strict=True))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                dispatch: str = "sorted", backend: str = "auto") -> torch.Tensor:
        """sum_k weights[t, k] * expert_{indices[t, k]}(x[t]) for x (T, H), weights and (global) indices (T, k).

        Runs :func:`mlakit.kernels.moe_experts` with strategy ``dispatch`` on ``backend``.
        """
        if self.first_expert:
            indices = indices - self.first_expert  # (T, k) local ids
        return moe_experts(x, weights, indices, self.gate_up_proj, self.down_proj, backend=backend, dispatch=dispatch)

    def extra_repr(self) -> str:
        local = ""
        if self.num_local_experts != self.num_experts:
            local = f", local=[{self.first_expert}, {self.first_expert + self.num_local_experts})"
        return f"experts={self.num_experts}{local}, hidden={self.hidden_size}, intermediate={self.intermediate_size}"


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


__all__ = ["RoutedExperts", "expert_seed", "swiglu", "dispatch_loop", "dispatch_sorted", "sort_by_expert", "GroupedSwiGLU",
           "get_dispatch", "DISPATCH_FUNCTIONS", "DISPATCHES"]
