"""Cache-size plots: how the KV cache grows with context under each attention design."""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..kvcache import cache_bytes, default_gqa_groups

GIB = 1024**3
KIND_STYLE = {"mha": ("MHA", "tab:red"), "gqa": ("GQA", "tab:orange"), "mqa": ("MQA", "tab:green"),
              "mla": ("MLA", "tab:blue"), "mla-expanded": ("MLA, expanded K/V", "tab:purple")}


def plot_cache_vs_context(config: ModelConfig, kinds=("mha", "gqa", "mqa"), dtype="bf16", batch_size: int = 1,
                          max_context: int = 128 * 1024, gpu_memory_gb=(80,), num_key_value_heads: int | None = None,
                          title: str | None = None, ax=None):
    """Cache size (GiB, log scale) against context length, one line per design, GPU memory drawn in.

    Returns the matplotlib Axes. GPU memory lines are in GB as vendors quote them
    (80 GB = 80e9 bytes) and drawn at their GiB height.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    contexts = np.unique(np.geomspace(256, max_context, 60).astype(int))
    for kind in kinds:
        label, color = KIND_STYLE[kind]
        g = (num_key_value_heads or default_gqa_groups(config)) if kind == "gqa" else None
        sizes = [cache_bytes(config, int(t), batch_size, dtype, kind, g) / GIB for t in contexts]
        if kind == "gqa":
            label = f"GQA ({g} KV heads)"
        ax.plot(contexts, sizes, label=label, color=color, lw=2)
    for gb in gpu_memory_gb:
        ax.axhline(gb * 1e9 / GIB, color="black", ls="--", lw=1)
        ax.text(contexts[0], gb * 1e9 / GIB * 1.08, f"{gb} GB GPU", fontsize=9)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"KV cache (GiB, {dtype}, batch {batch_size})")
    ax.set_title(title or "KV cache size against context length")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return ax
