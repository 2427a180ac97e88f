"""Plots for lesson 14: accumulation error against K, tile scales of activations with outliers, FP8 training."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def plot_accumulation_error(ks: list[int], errors: dict[str, list[float]], title: str | None = None):
    """Relative GEMM error (percent, log scale) against the reduction length K, one line per accumulator."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for name, values in errors.items():
        ax.plot(ks, [100 * v for v in values], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("reduction length K (elements summed per output)")
    ax.set_ylabel("relative error (%)")
    ax.set_title(title or "A narrow accumulator's error grows with K; promotion every 128 keeps it flat")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def plot_tile_scales(x: torch.Tensor, scales: torch.Tensor, title: str | None = None):
    """|x| of a (tokens, channels) activation beside the scales of its 1 x 128 tiles (log colour)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained",
                             gridspec_kw={"width_ratios": [3, 1]})
    im = axes[0].imshow(x.abs().clamp_min(1e-3).log10(), aspect="auto", cmap="viridis")
    axes[0].set_xlabel("channel")
    axes[0].set_ylabel("token")
    axes[0].set_title("log10 |activation|")
    fig.colorbar(im, ax=axes[0])
    im = axes[1].imshow(scales.log10(), aspect="auto", cmap="magma")
    axes[1].set_xlabel("tile (128 channels)")
    axes[1].set_title("log10 scale per 1x128 tile")
    fig.colorbar(im, ax=axes[1])
    fig.suptitle(title or "An outlier channel raises the scale of its own tiles only")
    return fig


def plot_fp8_training(curves: dict[str, list[float]], window: int = 10, title: str | None = None):
    """Training loss against step (moving average over ``window`` steps), one line per precision."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for name, losses in curves.items():
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(range(1, len(losses) + 1), smooth, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss ({window}-step average)")
    ax.set_title(title or "Simulated FP8 GEMMs against full precision")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig
