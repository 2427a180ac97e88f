"""Scaling-out plots: a pipeline schedule's timeline, the bubbles of 1F1B / ZB1P / DualPipe, compute hiding comms.

Timelines come from :func:`mlakit.distributed.simulate_1f1b` (a list of
:class:`mlakit.distributed.Op`); bubbles from the formulas of
:func:`mlakit.distributed.bubble` (DeepSeek-V3 Table 2).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..distributed import SCHEDULES, Op, bubble

COLORS = {"F": "tab:blue", "B": "tab:orange", "W": "tab:green", "comm": "tab:red", "compute": "tab:blue"}


def plot_pipeline_timeline(ops: Sequence[Op], title: str | None = None, ax=None):
    """One row per stage, a bar per forward (blue), backward (orange) and weight-gradient (green) chunk labelled
    by micro-batch; gaps are the bubble. Returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * (1 + max(op.stage for op in ops))), layout="constrained")
    for op in ops:
        ax.barh(op.stage, op.end - op.start, left=op.start, color=COLORS[op.kind], edgecolor="white", height=0.8)
        ax.text((op.start + op.end) / 2, op.stage, str(op.mb), ha="center", va="center", fontsize=7, color="white")
    stages = 1 + max(op.stage for op in ops)
    ax.set_yticks(range(stages), [f"stage {s}" for s in range(stages)])
    ax.invert_yaxis()
    ax.set_xlabel("time (units of a forward chunk)")
    ax.set_xlim(0, max(op.end for op in ops))
    kinds = [k for k in ("F", "B", "W") if any(op.kind == k for op in ops)]
    names = {"F": "forward", "B": "backward" if "W" not in kinds else "input gradient", "W": "weight gradient"}
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[k]) for k in kinds]
    ax.legend(handles, [names[k] for k in kinds], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def plot_bubbles(pps: Sequence[int], F: float, B: float, W: float, FB: float, microbatches: int | None = None,
                 ax=None):
    """The bubble of each schedule against the number of stages PP (from V3's formulas); with ``microbatches``
    the y axis is the idle share of a step, bubble / (bubble + microbatches (F + B)). Returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4), layout="constrained")
    for schedule in SCHEDULES:
        ys = []
        for pp in pps:
            b = bubble(schedule, pp, F, B, W, FB)
            ys.append(b / (b + microbatches * (F + B)) if microbatches else b)
        ax.plot(list(pps), ys, marker="o", label=schedule)
    ax.set_xlabel("pipeline stages PP")
    ax.set_ylabel("idle share of a step" if microbatches else "bubble per device (units of F)")
    ax.set_title(f"F {F:g}, B {B:g}, W {W:g}, F&B {FB:g}" + (f", {microbatches} micro-batches" if microbatches else ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_overlap(compute: Sequence[float], comm: Sequence[float], ax=None):
    """Chunks whose compute and communication alternate, run one after the other (top two rows) and with each
    chunk's communication hidden under the next chunk's compute (bottom two rows). Returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 2.6), layout="constrained")
    t = 0.0
    for c, m in zip(compute, comm, strict=True):  # serial: compute, then its communication
        ax.barh(0, c, left=t, color=COLORS["compute"], edgecolor="white")
        ax.barh(1, m, left=t + c, color=COLORS["comm"], edgecolor="white")
        t += c + m
    serial = t
    t_compute, t_comm = 0.0, 0.0
    for c, m in zip(compute, comm, strict=True):  # overlapped: the comm stream trails the compute stream
        ax.barh(3, c, left=t_compute, color=COLORS["compute"], edgecolor="white")
        t_compute += c
        start = max(t_compute, t_comm)
        ax.barh(4, m, left=start, color=COLORS["comm"], edgecolor="white")
        t_comm = start + m
    overlapped = max(t_compute, t_comm)
    ax.set_yticks([0, 1, 3, 4], ["compute", "comm", "compute", "comm (own SMs)"])
    ax.invert_yaxis()
    ax.axvline(serial, color="gray", ls=":")
    ax.axvline(overlapped, color="black", ls="--")
    ax.set_xlabel("time")
    ax.set_title(f"serial {serial:g} vs overlapped {overlapped:g}")
    return ax


__all__ = ["plot_pipeline_timeline", "plot_bubbles", "plot_overlap"]
