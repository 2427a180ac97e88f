"""DeepSeekMoE plots: expert load over training, MaxVio curves, total against active parameters.

Loads come from :class:`mlakit.moe.LoadTracker` (or any (steps, layers, experts)
array); MaxVio is the balance metric of arXiv 2408.15664 (:func:`mlakit.moe.max_violation`).
Parameter counts are taken as numbers, so the bar chart shows whatever a
caller counted or a paper reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..moe import LoadTracker, max_violation

MAX_PANEL_COLUMNS = 4  # heatmap panels per row before wrapping
PARAM_UNITS = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))  # how parameter counts are usually written


def _as_history(history) -> np.ndarray:
    """(steps, layers, experts) float array from a LoadTracker, a tensor or an array; (steps, E) is one layer."""
    if isinstance(history, LoadTracker):
        history = history.history
    arr = np.asarray(history, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[:, None, :]  # (steps, 1, E)
    if arr.ndim != 3:
        raise ValueError(f"expected loads of shape (steps, layers, experts), got {arr.shape}")
    return arr


def plot_expert_load(history, layer_names: Sequence[str] | None = None, steps: Sequence[int] | None = None,
                     title: str | None = None, fig=None):
    """Heatmap of each expert's load relative to the mean (1 = balanced), experts x steps, one panel per layer.

    ``history`` is a LoadTracker or an array (steps, layers, experts) of token
    counts. Blue is underloaded, red overloaded, white exactly at the mean.
    Returns the Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    loads = _as_history(history)  # (S, L, E)
    n_steps, n_layers, n_experts = loads.shape
    mean = loads.mean(axis=-1, keepdims=True)  # (S, L, 1)
    relative = np.divide(loads, mean, out=np.ones_like(loads), where=mean > 0)  # (S, L, E)
    names = list(layer_names) if layer_names is not None else [f"MoE layer {i}" for i in range(n_layers)]
    if len(names) != n_layers:
        raise ValueError(f"{len(names)} layer names for {n_layers} layers")
    x = np.asarray(steps if steps is not None else np.arange(n_steps))
    if len(x) != n_steps:
        raise ValueError(f"{len(x)} step numbers for {n_steps} recorded steps")

    cols = min(n_layers, MAX_PANEL_COLUMNS)
    rows = math.ceil(n_layers / cols)
    if fig is None:
        fig = plt.figure(figsize=(3.6 * cols + 1.0, 2.8 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    top = max(float(relative.max()), 1.0 + 1e-6)  # the colour scale is centred on a balanced load
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=max(top, 2.0))
    image = None
    for layer, ax in enumerate(axes):
        if layer >= n_layers:
            ax.set_visible(False)
            continue
        extent = (x[0] - 0.5, x[-1] + 0.5, n_experts - 0.5, -0.5) if n_steps > 1 else None
        image = ax.imshow(relative[:, layer, :].T, aspect="auto", cmap="RdBu_r", norm=norm,
                          interpolation="nearest", extent=extent)  # (E, S): experts down, steps across
        ax.set_title(names[layer])
        ax.set_xlabel("training step")
        ax.set_ylabel("expert")
    fig.colorbar(image, ax=axes[:n_layers].tolist(), label="load / mean load (1 = balanced)")
    fig.suptitle(title or "Expert load over training")
    return fig


def plot_max_violation(runs: Mapping[str, object], steps: Sequence[int] | None = None, reduce: str = "mean",
                       log: bool = False, title: str | None = None, ax=None):
    """MaxVio against training step, one curve per named run.

    Each run is a LoadTracker, a (steps,) array of MaxVio values, or a
    (steps, layers) array that is reduced over layers with ``reduce``
    ("mean" or "max"). Returns the Axes.
    """
    import matplotlib.pyplot as plt

    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce={reduce!r} is invalid: use 'mean' or 'max' over layers")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    for name, run in runs.items():
        vio = np.asarray(max_violation(run.history) if isinstance(run, LoadTracker) else run, dtype=np.float64)
        if vio.ndim == 2:
            vio = vio.mean(axis=1) if reduce == "mean" else vio.max(axis=1)  # (steps,)
        x = np.asarray(steps) if steps is not None else np.arange(len(vio))
        ax.plot(x[:len(vio)], vio, label=name, lw=2)
    ax.axhline(0.0, color="black", lw=1, ls="--")
    if log:
        ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("training step")
    layers = f", {reduce} over layers" if reduce == "mean" else ", worst layer"
    ax.set_ylabel(f"MaxVio (max load / mean load - 1{layers})")
    ax.set_title(title or "Load imbalance (MaxVio) during training")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return ax


def format_params(n: float) -> str:
    """671e9 -> '671B', 2.4e9 -> '2.4B', 15.7e6 -> '15.7M'."""
    for scale, unit in PARAM_UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def plot_active_parameters(models: Mapping[str, object], title: str | None = None, log: bool = True, ax=None):
    """Bars of total against active parameters per token, one pair per model, active share written on top.

    ``models`` maps a name to {"total": n, "active": n} or to a (total, active)
    pair, e.g. {"DeepSeek-V3": {"total": 671e9, "active": 37e9}}. Returns the Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    names, totals, actives = [], [], []
    for name, counts in models.items():
        total, active = (counts["total"], counts["active"]) if isinstance(counts, Mapping) else counts
        if not 0 < active <= total:
            raise ValueError(f"{name}: active={active} must be in (0, total={total}]")
        names.append(name)
        totals.append(float(total))
        actives.append(float(active))
    if ax is None:
        _, ax = plt.subplots(figsize=(1.8 * len(names) + 3, 4.2))
    x = np.arange(len(names))
    width = 0.38
    ax.bar(x - width / 2, totals, width, label="total", color="tab:gray")
    ax.bar(x + width / 2, actives, width, label="active per token", color="tab:blue")
    for i, (total, active) in enumerate(zip(totals, actives, strict=True)):
        ax.text(x[i] - width / 2, total, format_params(total), ha="center", va="bottom", fontsize=9)
        ax.text(x[i] + width / 2, active, f"{format_params(active)}\n({100 * active / total:.1f}%)",
                ha="center", va="bottom", fontsize=9)
    if log:
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_params(v)))
    ax.set_xticks(x, names)
    ax.set_xlabel("model")
    ax.set_ylabel("parameters" + (" (log scale)" if log else ""))
    ax.set_title(title or "A mixture of experts stores many parameters but uses few per token")
    ax.legend()
    ax.margins(y=0.15)
    return ax


__all__ = ["plot_expert_load", "plot_max_violation", "plot_active_parameters", "format_params"]
