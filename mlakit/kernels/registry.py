"""The kernel registry: one dispatch point per operation, a torch reference and optional Triton kernels.

Every operation (``op``) the library may hand to a hand-written kernel has a
name ("rmsnorm", "mla_decode", "moe_experts") and up to one function per
backend:

- ``"torch"``: the reference, plain torch ops, always registered, runs
  anywhere (CPU, CUDA, meta) and supports autograd;
- ``"triton"``: a Triton kernel, registered beside its reference in
  ``mlakit/kernels/<op>.py`` (Liger-Kernel's layout). It can run where triton
  is installed and either the inputs are on a CUDA device or
  ``TRITON_INTERPRET=1`` is set (Triton's interpreter runs kernels on CPU
  tensors; set the variable before triton is first imported).

A caller asks for ``backend="torch" | "triton" | "auto"``. "auto" picks the
Triton kernel where one is registered and can run, otherwise the torch
reference, so a model runs unchanged on a laptop and on a GPU. Asking for a
backend that cannot run raises :class:`BackendUnavailableError` naming
everything that is missing, e.g. ``backend='triton' for rmsnorm: no Triton
kernel is registered yet; triton is not installed``.

Modules that call a kernel (:class:`mlakit.layers.RMSNorm`,
:class:`mlakit.moe.DeepSeekMoE`) keep a ``backend`` attribute, overridable per
call; :func:`set_backend` sets it on every such submodule of a model.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable

import torch
from torch import nn

BACKENDS = ("torch", "triton")  # what a kernel can be registered as
CHOICES = (*BACKENDS, "auto")  # what a caller can ask for
_TRUE = ("1", "true", "on", "yes")  # values of TRITON_INTERPRET that switch the interpreter on

_KERNELS: dict[str, dict[str, Callable]] = {}  # op -> backend -> function
_TRITON_INSTALLED: bool | None = None  # looked up once, on first need


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here; the message says what is missing."""


def register(op: str, backend: str, fn: Callable | None = None):
    """Register ``fn`` as the ``backend`` implementation of ``op``; usable as a decorator.

    All backends of an op take the op's positional arguments (see the op's
    module); a later registration for the same (op, backend) replaces the earlier.
    """
    if backend not in BACKENDS:
        raise ValueError(f"register backend={backend!r} is invalid: a kernel is one of {', '.join(BACKENDS)}")
    if fn is None:
        return lambda f: register(op, backend, f)
    _KERNELS.setdefault(op, {})[backend] = fn
    return fn


def ops() -> tuple[str, ...]:
    """The registered operations, sorted."""
    return tuple(sorted(_KERNELS))


def check_backend(backend: str) -> str:
    """``backend`` if it is "torch", "triton" or "auto"; ValueError otherwise."""
    if backend not in CHOICES:
        raise ValueError(f"backend={backend!r} is invalid: use one of {', '.join(map(repr, CHOICES))}")
    return backend


def triton_installed() -> bool:
    """Whether the ``triton`` package can be imported (looked up once, without importing it)."""
    global _TRITON_INSTALLED
    if _TRITON_INSTALLED is None:
        _TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
    return _TRITON_INSTALLED


def triton_interpret() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's interpreter (kernels on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd would record an op on ``tensors``: grad mode on and one of them requires grad.

    The forward-only kernels (MLA decode, fused MoE) leave "auto" on the torch reference then.
    """
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _triton_library_interpreted() -> bool:
    """Whether triton's own jit functions (``tl.sum``, ...) were defined for the interpreter on import."""
    try:
        import triton.language.standard as standard
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # a layout this check does not know: let the launch speak for itself
        return True
    return isinstance(getattr(standard, "sum", None), InterpretedFunction)


def check_triton_launch(op: str, defined_interpreted: bool, device: torch.device) -> None:
    """Raise a clear error where a Triton kernel cannot launch on ``device`` because of when it was defined.

    ``triton.jit`` reads ``TRITON_INTERPRET`` when a function is defined: when
    triton is first imported (its own library: ``tl.sum``, ...) and on the
    first call of a backend (the library's kernels). Kernels defined without
    it cannot run on CPU tensors later, and interpreted ones never reach the GPU.
    """
    if device.type != "cuda" and not (defined_interpreted and _triton_library_interpreted()):
        raise BackendUnavailableError(
            f"the Triton kernels of {op} (or triton itself, on import) were defined before TRITON_INTERPRET=1 was "
            f"set, so they cannot run on {device.type} tensors: set it before triton is first imported, e.g. first "
            "thing in a notebook (restart the Python process or notebook kernel)")
    if device.type == "cuda" and defined_interpreted:
        raise BackendUnavailableError(
            f"the Triton kernels of {op} were defined with TRITON_INTERPRET=1 (the interpreter, CPU tensors "
            "only): unset it before the first call to run them on the GPU")


def _kernels_of(op: str) -> dict[str, Callable]:
    kernels = _KERNELS.get(op)
    if kernels is None:
        raise ValueError(f"unknown kernel op {op!r}: registered ops are {', '.join(ops())}")
    return kernels


def _missing(op: str, backend: str, device: torch.device | None) -> list[str]:
    """What stops ``backend`` of ``op`` from running on ``device`` (None: this machine); empty if nothing."""
    reasons = []
    if backend not in _KERNELS[op]:
        reasons.append(f"no {'Triton' if backend == 'triton' else 'torch'} kernel is registered yet")
    if backend == "triton":
        if not triton_installed():
            reasons.append("triton is not installed (pip install triton, or mlakit[gpu])")
        elif not triton_interpret():
            if device is None and not torch.cuda.is_available():
                reasons.append("it needs a CUDA device or TRITON_INTERPRET=1 (no CUDA device is visible)")
            elif device is not None and device.type != "cuda":
                reasons.append(f"it needs a CUDA device or TRITON_INTERPRET=1 (the inputs are on {device.type})")
    return reasons


def available(op: str, device: torch.device | str | None = None) -> tuple[str, ...]:
    """The backends of ``op`` that can run here (on ``device`` when given), e.g. ("torch",)."""
    _kernels_of(op)
    device = torch.device(device) if isinstance(device, str) else device
    return tuple(b for b in BACKENDS if not _missing(op, b, device))


def resolve(op: str, backend: str = "auto", device: torch.device | str | None = None) -> str:
    """The backend that ``get(op, backend, device)`` returns: "auto" made concrete, the others checked.

    ``device`` is where the inputs live (None: this machine, i.e. CUDA if one
    is visible); :class:`BackendUnavailableError` when a named backend cannot run there.
    """
    kernels = _kernels_of(op)
    check_backend(backend)
    device = torch.device(device) if isinstance(device, str) else device
    if backend == "auto":
        # the fast path of every call: without a Triton kernel nothing else is looked at
        return "triton" if "triton" in kernels and not _missing(op, "triton", device) else "torch"
    reasons = _missing(op, backend, device)
    if reasons:
        here = ", ".join(available(op, device)) or "none"
        raise BackendUnavailableError(f"backend={backend!r} for {op}: {'; '.join(reasons)}; "
                                      f"available here: {here}")
    return backend


def get(op: str, backend: str = "auto", device: torch.device | str | None = None) -> Callable:
    """The function that computes ``op`` with ``backend`` ("torch", "triton" or "auto") on ``device``.

    ValueError for an unknown op or backend name, :class:`BackendUnavailableError`
    for a backend that cannot run (the message names what is missing).
    """
    backend = resolve(op, backend, device)
    return _KERNELS[op][backend]


def set_backend(module: nn.Module, backend: str, ops: Iterable[str] | None = None) -> nn.Module:
    """Set ``backend`` on every submodule of ``module`` that calls a kernel (those with ``kernel_ops``).

    ``ops`` limits the change to modules calling one of these ops (e.g.
    ``["rmsnorm"]``). Availability is checked at call time, where the inputs'
    device is known. Returns ``module``.
    """
    check_backend(backend)
    wanted = None if ops is None else set(ops)
    for name in wanted or ():
        _kernels_of(name)
    for m in module.modules():
        kernel_ops = getattr(m, "kernel_ops", ())
        if kernel_ops and (wanted is None or wanted & set(kernel_ops)):
            m.backend = backend
    return module


__all__ = ["BACKENDS", "CHOICES", "BackendUnavailableError", "register", "ops", "check_backend",
           "triton_installed", "triton_interpret", "needs_grad", "check_triton_launch", "available", "resolve", "get", "set_backend"]
