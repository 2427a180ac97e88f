"""Kernels: one dispatch point per operation, each with a torch reference beside it.

| op | function | torch reference | Triton |
|---|---|---|---|
| ``rmsnorm`` | :func:`rmsnorm` (x, weight, eps) | :func:`~mlakit.kernels.rmsnorm.rmsnorm_torch` | :mod:`~mlakit.kernels.rmsnorm_triton` (forward and backward) |
| ``mla_decode`` | :func:`mla_decode` (q, latent, lengths, scale, kv_lora_rank) | :func:`~mlakit.kernels.mla_decode.mla_decode_torch` | :mod:`~mlakit.kernels.mla_decode_triton` (split-KV, forward) |
| ``moe_experts`` | :func:`moe_experts` (x, weights, indices, gate_up_proj, down_proj), alias :func:`fused_moe` (x, gate_up_proj, down_proj, topk_ids, topk_weights) | :func:`~mlakit.kernels.moe_experts.moe_experts_torch` ("loop" / "sorted") | :mod:`~mlakit.kernels.moe_experts_triton` (fused MoE, forward) |

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
reference and the registration of both backends side by side; the Triton
kernels live in ``kernels/<op>_triton.py``, imported on the first call of the
"triton" backend, so ``import mlakit`` never imports triton. To run them on
CPU tensors through Triton's interpreter, set ``TRITON_INTERPRET=1`` before
triton is first imported (``triton.jit`` reads it when triton defines its own
library and when a kernel is defined; ``tests/conftest.py`` and lesson 12 show
how). A Triton kernel registers with ``register("<op>", "triton", fn)``; ``fn``
takes the same arguments as the reference. The forward-only kernels (MLA
decode, fused MoE) leave "auto" on the torch reference when autograd needs
gradients. Note that the op functions share their modules' names: ``mlakit.kernels.rmsnorm`` is the function, and the module's other
names are imported from it (``from mlakit.kernels.rmsnorm import rmsnorm_torch``).
"""

from .mla_decode import mla_decode  # each op module registers its torch reference on import
from .moe_experts import fused_moe, moe_experts
from .registry import (
    BACKENDS,
    CHOICES,
    BackendUnavailableError,
    available,
    check_backend,
    check_triton_launch,
    get,
    needs_grad,
    ops,
    register,
    resolve,
    set_backend,
    triton_installed,
    triton_interpret,
)
from .rmsnorm import rmsnorm

__all__ = ["rmsnorm", "mla_decode", "moe_experts", "fused_moe", "get", "available", "resolve", "register", "ops",
           "check_backend", "set_backend", "needs_grad", "check_triton_launch", "triton_installed", "triton_interpret", "BACKENDS", "CHOICES",
           "BackendUnavailableError"]
