"""What RL costs, in pictures: forgetting against the KL budget, and reward hacking.

Both read rows as :class:`mlakit.rl.GRPOTrainer` logs them (``history``) or as
``experiments/rl_costs.py`` writes them to CSV (numbers, or strings of numbers):
``step``, ``acc_arithmetic`` and ``acc_toolcall`` (held-out greedy accuracy of each
skill at the evaluation steps), ``kl`` (k3 to the reference), ``reward_<name>``.

- :func:`plot_forgetting`: one run per KL weight beta. Left, both skills' held-out
  accuracy against step (arithmetic solid, tool calls dashed); right, the trade-off
  in one picture: each run's change in held-out tool-call accuracy against its change
  in held-out arithmetic accuracy, the point's size and label giving its final k3.
- :func:`read_results`: a results CSV with its header (command, seed, machine);
- :func:`plot_hacking`: the training reward a sloppy verifier gives against step,
  beside the strict verifier's verdict on the same samples and on held-out problems;
- :func:`plot_measures`: any held-out measures of one run against step, one line each
  (the safety run: sums, tool calls, refusals, tool requests refused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..utils import finite_float
from .rl import moving_average

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:red")


def read_results(path) -> tuple[dict, list[dict]]:
    """A results CSV of ``experiments/``: its ``# key: value`` header lines (command, seed, machine, seconds)
    as a dict, and its rows as dicts of strings (empty cells: None)."""
    import csv
    from pathlib import Path

    meta, lines = {}, []
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            meta[key.strip()] = value.strip()
        elif line.strip():
            lines.append(line)
    rows = [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(lines)]
    return meta, rows



def series(rows: Sequence[Mapping], key: str, min_step: float = -np.inf) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows that hold ``key`` as a finite number, steps >= ``min_step``."""
    steps, values = [], []
    for r in rows:
        step, value = finite_float(r.get("step")), finite_float(r.get(key))
        if step is not None and value is not None and step >= min_step:
            steps.append(step)
            values.append(value)
    return np.asarray(steps), np.asarray(values)


def tradeoff(rows: Sequence[Mapping], window: int = 10, reward: str = "reward_accuracy") -> dict:
    """One run's costs: held-out accuracy of each skill at the first and last evaluation and their change;
    the mean k3 over the last ``window`` logged steps; and ``reward_change``, the mean of the training
    ``reward`` over the last ``window`` steps minus its value at the first logged step, whose samples the
    base drew before any update (sampled accuracy, what GRPO maximises; NaN when not logged)."""
    out = {}
    for skill in ("arithmetic", "toolcall"):
        _, acc = series(rows, f"acc_{skill}")
        if len(acc) == 0:
            raise ValueError(f"no acc_{skill} in the rows: log it with mlakit.rl.skills_eval")
        out[f"{skill}_before"], out[f"{skill}_after"] = float(acc[0]), float(acc[-1])
        out[f"{skill}_change"] = float(acc[-1] - acc[0])
    _, kl = series(rows, "kl")
    out["kl"] = float(kl[-window:].mean()) if len(kl) else float("nan")
    _, trained = series(rows, reward)
    out["reward_change"] = float(trained[-window:].mean() - trained[0]) if len(trained) else float("nan")
    return out


def plot_forgetting(runs: Mapping[str, Sequence[Mapping]], title: str | None = None, window: int = 10):
    """Forgetting against the KL budget: ``runs`` maps a label ("beta = 0.04") to one run's rows.

    Returns the figure (two panels: accuracy of both skills against step; tool-call change against
    arithmetic change, labelled with the final k3).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    if not runs:
        raise ValueError("runs is empty: give {label: rows}")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained",
                                      gridspec_kw={"width_ratios": [1.4, 1]})
    for i, (label, rows) in enumerate(runs.items()):
        color = COLORS[i % len(COLORS)]
        for skill, style in (("arithmetic", "o-"), ("toolcall", "s--")):
            steps, acc = series(rows, f"acc_{skill}")
            left.plot(steps, acc, style, color=color, ms=4, lw=1.5,
                      label=f"{label}: {'arithmetic' if skill == 'arithmetic' else 'tool calls'}")
        cost = tradeoff(rows, window)
        right.scatter(cost["arithmetic_change"], cost["toolcall_change"], s=60 + 2000 * max(cost["kl"], 0),
                      color=color, alpha=0.75, edgecolor="black")
        right.annotate(f"{label}\nk3 {cost['kl']:.3f}", (cost["arithmetic_change"], cost["toolcall_change"]),
                       textcoords="offset points", xytext=(8, 6), fontsize=8)
    left.set_xlabel("GRPO step")
    left.set_ylabel("held-out greedy accuracy")
    left.yaxis.set_major_formatter(PercentFormatter(1.0))
    left.set_ylim(-0.03, 1.03)
    left.grid(alpha=0.3)
    left.legend(fontsize=7, ncol=2, loc="lower left")
    left.set_title("both skills during arithmetic-only GRPO")
    right.axhline(0, color="gray", lw=0.8)
    right.axvline(0, color="gray", lw=0.8)
    for axis in (right.xaxis, right.yaxis):
        axis.set_major_locator(MaxNLocator(6))  # percent labels are wide: few of them
        axis.set_major_formatter(PercentFormatter(1.0))
    right.set_xlabel("arithmetic: change in held-out greedy accuracy")
    right.set_ylabel("tool calls: change in held-out accuracy")
    right.grid(alpha=0.3)
    right.set_title(f"the trade-off (size: k3 to the base, last {window} steps)")
    right.margins(0.25)
    if title:
        fig.suptitle(title)
    return fig


def plot_hacking(rows: Sequence[Mapping], trained: str = "reward_sloppy", strict: str = "reward_strict",
                 held_out: str = "acc_arithmetic", length: str = "completion_length", smooth: int = 10,
                 title: str | None = None):
    """Reward hacking: the reward trained on, the strict verifier on the same samples, strict held-out accuracy
    (points), and completion length (right panel), against step. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    for key, label, color in ((trained, "training reward (sloppy verifier)", "tab:orange"),
                              (strict, "strict verifier, same samples", "tab:blue")):
        steps, values = series(rows, key)
        if len(values) == 0:
            raise ValueError(f"no {key!r} in the rows")
        left.plot(steps, values, color=color, alpha=0.25, lw=1)
        left.plot(steps, moving_average(values, smooth), color=color, lw=2, label=label)
    steps, acc = series(rows, held_out)
    left.plot(steps, acc, "o", color="tab:red", ms=6, label="strict held-out accuracy (greedy)")
    left.set_ylim(-0.03, 1.03)
    left.yaxis.set_major_formatter(PercentFormatter(1.0))
    left.set_xlabel("GRPO step")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    left.set_title("what the reward says, and what is true")
    steps, values = series(rows, length)
    right.plot(steps, values, color="tab:green", alpha=0.25, lw=1)
    right.plot(steps, moving_average(values, smooth), color="tab:green", lw=2)
    right.set_xlabel("GRPO step")
    right.set_ylabel("completion length (tokens)")
    right.grid(alpha=0.3)
    right.set_title("completion length")
    if title:
        fig.suptitle(title)
    return fig


def plot_measures(rows: Sequence[Mapping], measures: Mapping[str, str], title: str | None = None, ax=None):
    """Held-out measures of one run against step: ``measures`` maps a key of the rows ("acc_refusal") to its
    label; each key must have at least one value. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    if not measures:
        raise ValueError("measures is empty: give {key: label}")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    for i, (key, label) in enumerate(measures.items()):
        steps, values = series(rows, key)
        if len(values) == 0:
            raise ValueError(f"no {key!r} in the rows")
        ax.plot(steps, values, "o-", color=COLORS[i % len(COLORS)], ms=4, lw=1.5, label=label)
    ax.set_xlabel("GRPO step")
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title)
    return fig or ax.figure


__all__ = ["read_results", "series", "tradeoff", "plot_forgetting", "plot_hacking", "plot_measures"]
