"""What the benchmark scripts share: the machine line, interleaved best-of timing, transformers configs.

Tables are printed with :func:`mlakit.kvcache.format_table`.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch

from mlakit import ModelConfig


def device_and_dtypes() -> list[tuple[str, torch.dtype]]:
    """fp32 on the CPU; bf16 (and fp32) on a GPU when one is present."""
    if torch.cuda.is_available():
        return [("cuda", torch.bfloat16), ("cuda", torch.float32)]
    return [("cpu", torch.float32)]


def machine(device: str = "cpu") -> str:
    """One line naming the hardware and software a table was measured on."""
    if device == "cuda":
        hw = torch.cuda.get_device_name()
    else:
        cpu = platform.processor() or "CPU"
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        hw = f"{cpu}, {torch.get_num_threads()} threads"
        policy = os.environ.get("OMP_WAIT_POLICY")
        if policy:
            hw += f" (OMP_WAIT_POLICY={policy})"
    return f"{hw}; torch {torch.__version__}, Python {platform.python_version()}"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_best(steps: dict[str, Callable[[], object]], rounds: int, device: str = "cpu",
                     min_rounds: int = 3, budget_s: float = 20.0) -> dict[str, float]:
    """Best seconds of each step over ``rounds`` rounds after one warm-up round.

    The steps take turns inside every round, so a busy spell of the machine
    slows all of them rather than one. Rounds stop early (after ``min_rounds``)
    once ``budget_s`` is spent, so the slowest rows of a table stay affordable.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up: allocator, caches, lazy initialisation
        step()
    sync(device)
    spent = 0.0
    for r in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
        spent += sum(t[-1] for t in times.values())
        if r + 1 >= min_rounds and spent > budget_s:
            break
    return {name: min(t) for name, t in times.items()}


def transformers_config(cfg: ModelConfig, **extra):
    """transformers' DeepseekV3Config for an mlakit config, eager attention (what mlakit.hf exports)."""
    from transformers import DeepseekV3Config

    from mlakit.hf import hf_config_dict

    data = {k: v for k, v in hf_config_dict(cfg).items() if k not in ("architectures", "model_type", "mlakit_config")}
    hf = DeepseekV3Config(**data, **extra)
    hf._attn_implementation = "eager"
    return hf

