"""GPU kernels in pictures: the roofline of a GPU with kernels placed on it, and split-KV decoding's splits.

:func:`plot_roofline` draws attainable throughput against arithmetic intensity
(FLOPs per byte moved) on log axes: the slanted memory roof (bandwidth x
intensity) meets the flat compute roof at the ridge point, peak FLOPs /
bandwidth. A kernel left of the ridge is memory-bound (its speed is the bytes
it must read), right of it compute-bound. ``points`` places named kernels.

:func:`plot_split_kv` draws a batch of sequences in a preallocated cache as
rows of cache positions, coloured by the split (the program of stage 1) that
reads them; positions past a sequence's length are never read (hatched), and
a split with nothing to read exits at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle


def plot_roofline(peak_tflops: float, peak_gbs: float, points: Mapping[str, float] | None = None,
                  title: str | None = None, ax=None):
    """Attainable TFLOP/s against FLOPs per byte for a GPU of ``peak_tflops`` and ``peak_gbs`` GB/s.

    ``points`` maps a kernel's name to its arithmetic intensity; each is drawn
    on the roof (its best attainable throughput). Returns the axes.
    """
    if peak_tflops <= 0 or peak_gbs <= 0:
        raise ValueError(f"plot_roofline needs positive peaks; got peak_tflops={peak_tflops}, peak_gbs={peak_gbs}")
    points = dict(points or {})
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    ridge = peak_tflops * 1e12 / (peak_gbs * 1e9)  # FLOPs per byte where the roofs meet
    lo = min([0.25, *[v / 4 for v in points.values() if v > 0]])
    hi = max([ridge * 16, *[v * 4 for v in points.values()]])
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    roof = [min(peak_tflops, x * peak_gbs / 1e3) for x in xs]
    ax.plot(xs, roof, color="black", lw=2)
    ax.axvline(ridge, color="gray", ls=":", lw=1)
    ax.annotate(f"ridge {ridge:.0f} FLOP/B", (ridge, peak_tflops / 20), rotation=90, ha="right", va="bottom",
                fontsize=8, color="gray")
    ax.text(lo * 1.2, lo * 1.2 * peak_gbs / 1e3 * 1.6, f"memory roof, {peak_gbs:,.0f} GB/s", rotation=0,
            fontsize=8, color="dimgray")
    ax.text(hi / 1.2, peak_tflops * 1.12, f"compute roof, {peak_tflops:,.0f} TFLOP/s", ha="right", fontsize=8,
            color="dimgray")
    markers = "osD^vP*X"
    for i, (name, x) in enumerate(points.items()):
        y = min(peak_tflops, x * peak_gbs / 1e3)
        ax.scatter([x], [y], zorder=3 + i, color=f"C{i}", marker=markers[i % len(markers)], s=max(20, 90 - 20 * i),
                   label=f"{name}: {x:,.1f} FLOP/B, "
                   f"{'memory' if x < ridge else 'compute'}-bound")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(roof) / 2, peak_tflops * 2)
    ax.set_xlabel("arithmetic intensity (FLOPs per byte read or written)")
    ax.set_ylabel("attainable TFLOP/s")
    ax.set_title(title or "Roofline")
    if points:
        ax.legend(fontsize=8, loc="lower right")
    return ax


def plot_split_kv(lengths: Sequence[int], s_max: int, num_splits: int, block: int = 1, ax=None):
    """Rows of a (B, s_max) cache coloured by split; ``lengths`` the filled rows of each sequence.

    The split size is ceil(s_max / num_splits) rounded up to whole blocks of
    ``block`` rows (as the library's kernel does). Returns the axes.
    """
    if num_splits < 1 or block < 1 or s_max < 1:
        raise ValueError(f"plot_split_kv needs num_splits, block and s_max >= 1; got {num_splits}, {block}, {s_max}")
    if any(n < 0 or n > s_max for n in lengths):
        raise ValueError(f"plot_split_kv lengths must lie in [0, {s_max}]; got {list(lengths)}")
    chunk = math.ceil(math.ceil(s_max / num_splits) / block) * block
    splits = math.ceil(s_max / chunk)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(lengths)), layout="constrained")
    for b, n in enumerate(lengths):
        for s in range(splits):
            start, end = s * chunk, min((s + 1) * chunk, s_max)
            filled = max(0, min(end, n) - start)
            if filled:
                ax.add_patch(Rectangle((start, b - 0.4), filled, 0.8, color=f"C{s % 10}", alpha=0.8))
            if end > max(start, n):  # the part past the length: never read
                ax.add_patch(Rectangle((max(start, n), b - 0.4), end - max(start, n), 0.8, fill=False,
                                       hatch="///", edgecolor="lightgray", lw=0))
            if not filled:
                ax.text((start + end) / 2, b, "empty", ha="center", va="center", fontsize=7, color="gray")
        ax.text(s_max * 1.01, b, f"length {n}", va="center", fontsize=8)
    for s in range(1, splits):
        ax.axvline(s * chunk, color="black", lw=0.8, ls="--")
    ax.set_xlim(0, s_max * 1.15)
    ax.set_ylim(len(lengths) - 0.5, -0.5)
    ax.set_yticks(range(len(lengths)), [f"sequence {b}" for b in range(len(lengths))])
    ax.set_xlabel("cache position")
    ax.set_title(f"split-KV: {splits} splits of {chunk} rows; one stage-1 program per (sequence, head block, split)")
    handles = [Patch(color=f"C{s % 10}", alpha=0.8, label=f"split {s}") for s in range(min(splits, 10))]
    handles.append(Patch(fill=False, hatch="///", edgecolor="lightgray", label="past the length: never read"))
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(6, splits + 1))
    return ax


__all__ = ["plot_roofline", "plot_split_kv"]
