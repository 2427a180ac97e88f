"""SFT and distillation: held-out accuracy of several runs against training step, and R1's distillation table.

:func:`plot_accuracy_curves` draws one line per run from the evaluations a
:class:`mlakit.train.Trainer` records (``trainer.evals``: dicts with ``step`` and
``exact_match``), so runs trained on the same budget (same steps, same batch size)
compare point by point; the last value of each run is written at its end.

:func:`plot_r1_distillation` draws the numbers DeepSeek-R1 reports for its distilled
models (a score per student size) beside a model of the same size trained with
large-scale RL instead, as bars. The numbers are the caller's (a lesson cell that
cites the paper's table): nothing is typed here.
"""

from __future__ import annotations

from collections.abc import Mapping

RUN_COLORS = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _evals(run) -> list[Mapping]:
    """The evaluation records of a Trainer, an SFTRun (its trainer) or a list of dicts."""
    trainer = getattr(run, "trainer", run)
    return list(getattr(trainer, "evals", trainer))


def plot_accuracy_curves(runs: Mapping[str, object], metric: str = "exact_match", ax=None, title: str | None = None,
                         ylabel: str = "exact match on held-out problems"):
    """Held-out ``metric`` (a share in [0, 1]) against training step, one line per run.

    ``runs`` maps a label to a :class:`~mlakit.train.Trainer`, an
    :class:`~mlakit.recipes.SFTRun` or a list of evaluation dicts (``step`` and
    ``metric``). Each line ends with its last value in percent. Returns the Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    if not runs:
        raise ValueError("runs is empty: pass {label: trainer or evaluations}")
    series = {}
    for label, run in runs.items():
        points = [e for e in _evals(run) if metric in e]
        if not points:
            raise ValueError(f"run {label!r} has no evaluation with {metric!r}: train it with an eval_fn (or "
                             f"eval_records) that returns {metric!r}")
        series[label] = ([e["step"] for e in points], [float(e[metric]) for e in points])
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for i, (label, (x, y)) in enumerate(series.items()):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        ax.plot(x, y, "o-", color=color, lw=1.6, ms=4, label=label)
        ax.annotate(f"{y[-1]:.0%}", (x[-1], y[-1]), xytext=(6, 0), textcoords="offset points", va="center",
                    color=color, fontsize=9)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(title or "Held-out accuracy during training")
    return ax


def plot_r1_distillation(distilled: Mapping[str, float], rl: Mapping[str, float] | None = None, ax=None,
                         title: str | None = None, ylabel: str = "AIME 2024 pass@1 (%)",
                         source: str | None = None, value_format: str = "{:.1f}"):
    """Bars of a score per distilled model (``distilled``: label -> score), then the RL-trained ones.

    ``rl`` (label -> score) are models trained with RL instead of distilled, drawn hatched
    after the distilled ones; ``source`` (the paper and table) goes under the x axis. Each
    bar carries its value, written with ``value_format`` (one decimal, as papers print them).
    Returns the Axes.
    """
    import matplotlib.pyplot as plt

    if not distilled:
        raise ValueError("distilled is empty: pass {model: score}")
    rl = dict(rl or {})
    labels = list(distilled) + list(rl)
    values = [float(v) for v in list(distilled.values()) + list(rl.values())]
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    colors = ["tab:blue"] * len(distilled) + ["tab:orange"] * len(rl)
    hatches = [""] * len(distilled) + ["//"] * len(rl)
    bars = ax.bar(range(len(labels)), values, color=colors, hatch=hatches, edgecolor="white")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(value_format.format(value), (bar.get_x() + bar.get_width() / 2, value), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=9)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(values) * 1.15)
    ax.grid(True, axis="y", alpha=0.3)
    handles = [bars[0]] + ([bars[len(distilled)]] if rl else [])
    ax.legend(handles, ["distilled from R1 (SFT only)"] + (["large-scale RL instead"] if rl else []),
              loc="upper left", fontsize=9)
    if source:
        ax.set_xlabel(source, fontsize=8)
    ax.set_title(title or "Distillation")
    return ax


def final_accuracies(runs: Mapping[str, object], metric: str = "exact_match") -> dict[str, float]:
    """{label: the last evaluation's ``metric``} of each run (see :func:`plot_accuracy_curves`)."""
    out = {}
    for label, run in runs.items():
        points = [e for e in _evals(run) if metric in e]
        if not points:
            raise ValueError(f"run {label!r} has no evaluation with {metric!r}")
        out[label] = float(points[-1][metric])
    return out


__all__ = ["plot_accuracy_curves", "plot_r1_distillation", "final_accuracies"]
