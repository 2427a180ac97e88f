"""Kernels: one dispatch point per operation, each with a torch reference beside it.

| op | function | torch reference | Triton |
|---|---|---|---|
| ``rmsnorm`` | :func:`rmsnorm` (x, weight, eps) | :func:`~mlakit.kernels.rmsnorm.rmsnorm_torch` | lesson 12 |
| ``mla_decode`` | :func:`mla_decode` (q, latent, lengths, scale, kv_lora_rank) | :func:`~mlakit.kernels.mla_decode.mla_decode_torch` | lesson 12 (split-KV) |
| ``moe_experts`` | :func:`moe_experts` (x, weights, indices, gate_up_proj, down_proj) | :func:`~mlakit.kernels.moe_experts.moe_experts_torch` ("loop" / "sorted") | lesson 12 (fused MoE) |

Each op function takes ``backend="torch" | "triton" | "auto"`` and asks the
registry (:mod:`mlakit.kernels.registry`) for the implementation: "auto" is
the Triton kernel where one is registered and can run (triton installed, and
CUDA inputs or ``TRITON_INTERPRET=1``), else the torch reference.
:func:`get` and :func:`available` answer the same questions directly::

    from mlakit import kernels
    kernels.available("rmsnorm")             # ("torch",) on a laptop
    kernels.get("rmsnorm", backend="torch")  # the reference function
    kernels.rmsnorm(x, weight, 1e-6)         # dispatched

Layout, after Liger-Kernel: ``kernels/<op>.py`` holds the op's torch
reference, its Triton kernel and their registration side by side. A Triton
kernel registers with ``register("<op>", "triton", fn)``; ``fn`` takes the same
arguments as the reference. Note that the op functions share their modules'
names: ``mlakit.kernels.rmsnorm`` is the function, and the module's other
names are imported from it (``from mlakit.kernels.rmsnorm import rmsnorm_torch``).
"""

from .mla_decode import mla_decode  # each op module registers its torch reference on import
from .moe_experts import moe_experts
from .registry import (
    BACKENDS,
    CHOICES,
    BackendUnavailableError,
    available,
    check_backend,
    get,
    ops,
    register,
    resolve,
    set_backend,
    triton_installed,
    triton_interpret,
)
from .rmsnorm import rmsnorm

__all__ = ["rmsnorm", "mla_decode", "moe_experts", "get", "available", "resolve", "register", "ops",
           "check_backend", "set_backend", "triton_installed", "triton_interpret", "BACKENDS", "CHOICES",
           "BackendUnavailableError"]
