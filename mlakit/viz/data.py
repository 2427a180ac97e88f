"""Synthetic-data plots: the pipeline's funnel, the LSH S-curve, pass@k against samples, contamination.

- :func:`plot_data_funnel` draws a :class:`~mlakit.data.DataCard` as a funnel:
  one bar per stage of :func:`~mlakit.data.build_dataset` (generated, then
  what is left after verification, exact dedup, near dedup, decontamination
  and each filter), the records a stage removed stacked, paler, after what it
  kept, so the bars shrink down to ``kept`` and every removal is labelled.
- :func:`plot_s_curve` draws the probability 1 - (1 - s^r)^b that LSH with b
  bands of r rows makes a pair of Jaccard similarity s a candidate
  (:func:`~mlakit.data.s_curve`), the threshold (1/b)^(1/r), and, when given,
  measured candidate rates with their binomial standard error.
- :func:`plot_pass_at_k` draws the unbiased pass@k (:func:`~mlakit.data.pass_at_k`)
  against k on a log-2 axis, one curve per group of problems (a
  :class:`~mlakit.data.RejectionResult` gives one per difficulty and one for all).
- :func:`plot_contamination` draws accuracies as grouped bars: each model on
  each evaluation set, the leaked one beside a fresh one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..data.card import STAGES
from ..data.lsh import lsh_threshold, s_curve
from ..data.passk import mean_pass_at_k

KEPT_COLOR, REMOVED_COLOR = "tab:blue", "tab:red"
STAGE_LABELS = {"failed_verification": "verification", "exact_duplicates": "exact dedup",
                "near_duplicates": "near dedup", "contaminated": "decontamination"}  # the stage, not what it removed


def _card_dict(card) -> dict:
    if hasattr(card, "to_dict"):
        return card.to_dict()
    if isinstance(card, Mapping):
        return dict(card)
    raise TypeError(f"expected a DataCard or its dict, got {type(card).__name__}")


def funnel_rows(card) -> list[tuple[str, int, int]]:
    """(stage, records left after it, records it removed) in pipeline order, from ``generated`` to the last filter.

    The first row is ("generated", generated, 0), then "verification", "exact dedup", "near dedup",
    "decontamination" and "filter: <name>"; the last row's count equals ``kept`` for a card that adds up.
    """
    data = _card_dict(card)
    for name in (*STAGES, "kept"):
        if name not in data:
            raise ValueError(f"the card has no {name!r} count: pass a DataCard or DataCard.to_dict()")
    left = int(data["generated"])
    rows = [("generated", left, 0)]
    for stage in STAGES[1:]:
        removed = int(data[stage])
        left -= removed
        rows.append((STAGE_LABELS[stage], left, removed))
    for name, removed in (data.get("filtered") or {}).items():
        left -= int(removed)
        rows.append((f"filter: {name}", left, int(removed)))
    if left != int(data["kept"]):
        raise ValueError(f"the card does not add up: {left} left after every stage, but kept = {data['kept']}")
    return rows


def plot_data_funnel(card, ax=None, title: str | None = None):
    """The card as a funnel: per stage, the records left (solid) and those it removed (pale, labelled).

    Returns the Axes. The x axis counts records; stages read top to bottom in pipeline order.
    """
    import matplotlib.pyplot as plt

    rows = funnel_rows(card)
    generated = rows[0][1]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.6), layout="constrained")
    y = np.arange(len(rows))
    left = np.array([r[1] for r in rows], dtype=float)
    removed = np.array([r[2] for r in rows], dtype=float)
    ax.barh(y, left, color=KEPT_COLOR, label="records left")
    ax.barh(y, removed, left=left, color=REMOVED_COLOR, alpha=0.35, label="removed by this stage")
    for i, (_, n_left, n_removed) in enumerate(rows):
        share = f" ({n_left / generated:.0%})" if generated else ""
        text = f"{n_left:,}{share}" + (f"   -{n_removed:,}" if n_removed else "")
        ax.text(n_left + n_removed + 0.01 * max(generated, 1), i, text, va="center", fontsize=9)
    ax.set_yticks(y, [r[0] for r in rows])
    ax.invert_yaxis()  # pipeline order, top to bottom
    ax.set_xlim(0, max(generated, 1) * 1.35)  # room for the labels
    ax.set_xlabel("records")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    data = _card_dict(card)
    ax.set_title(title or f"Data funnel: {data.get('task', '?')}, {rows[-1][1]:,} of {generated:,} records kept")
    return ax


def plot_s_curve(bands: int, rows: int, measured: tuple[Sequence[float], Sequence[float]] | None = None,
                 pairs: int | None = None, threshold: float | None = None, ax=None, title: str | None = None):
    """LSH candidate probability 1 - (1 - s^r)^b against Jaccard similarity s, and measured rates.

    ``measured`` is (similarities, candidate rates) from pairs of known similarity; with ``pairs``
    (pairs per point) each rate gets a binomial standard error bar. ``threshold`` marks the dedup
    threshold the banding was chosen for, beside the curve's own (1/b)^(1/r). Returns the Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    s = np.linspace(0.0, 1.0, 401)
    ax.plot(s, s_curve(s, bands, rows), color="tab:blue", lw=2,
            label=f"theory: 1 - (1 - s^{rows})^{bands}  ({bands} bands x {rows} rows)")
    knee = lsh_threshold(bands, rows)
    ax.axvline(knee, color="tab:blue", ls=":", lw=1.2, label=f"(1/b)^(1/r) = {knee:.2f}")
    if threshold is not None:
        ax.axvline(threshold, color="gray", ls="--", lw=1.2, label=f"dedup threshold {threshold:g}")
    if measured is not None:
        xs, rates = (np.asarray(v, dtype=np.float64) for v in measured)
        if xs.shape != rates.shape:
            raise ValueError(f"measured similarities {xs.shape} and rates {rates.shape} differ in length")
        if pairs:
            err = np.sqrt(np.clip(rates * (1 - rates), 0, None) / pairs)
            ax.errorbar(xs, rates, yerr=err, fmt="o", color="tab:orange", ms=5, capsize=2,
                        label=f"measured: share of {pairs} pairs that became candidates")
        else:
            ax.plot(xs, rates, "o", color="tab:orange", ms=5, label="measured candidate rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("Jaccard similarity s of a pair (shingle sets)")
    ax.set_ylabel("P(pair becomes a candidate)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(title or f"LSH with {bands} bands of {rows} rows: an S-curve around s = {knee:.2f}")
    return ax


def _pass_curves(source, n: int | None) -> tuple[int, dict[str, list[int]]]:
    """(samples per problem, {label: correct counts}) from a RejectionResult, a mapping or one list of counts."""
    if hasattr(source, "correct_counts") and hasattr(source, "num_samples"):  # a RejectionResult
        counts, groups = source.correct_counts, {}
        for d, c in zip(source.difficulties, counts, strict=True):
            groups.setdefault(f"difficulty {d}", []).append(c)
        curves = dict(sorted(groups.items())) if len(groups) > 1 else {}
        return source.num_samples, {**curves, "all problems": list(counts)}
    if n is None:
        raise ValueError("give n, the samples per problem, with the correct counts")
    if isinstance(source, Mapping):
        return n, {str(k): list(v) for k, v in source.items()}
    return n, {"all problems": list(source)}


def plot_pass_at_k(source, n: int | None = None, ks: Sequence[int] | None = None, greedy: float | None = None,
                   ax=None, title: str | None = None):
    """Unbiased pass@k against k (log-2 axis), one curve per group of problems.

    ``source`` is a :class:`~mlakit.data.RejectionResult` (one curve per difficulty and one for all
    problems), a mapping {label: correct counts per problem}, or one list of counts; ``n`` is the
    samples per problem (taken from a RejectionResult). ``ks`` default to 1, 2, 4, ... n.
    ``greedy`` draws the greedy exact match as a horizontal line. Returns the Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    n, curves = _pass_curves(source, n)
    if not curves or any(not counts for counts in curves.values()):
        raise ValueError("every curve needs the correct counts of at least one problem")
    ks = sorted(set(ks) if ks is not None else {2**i for i in range(n.bit_length()) if 2**i <= n} | {n})
    if ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"k must lie in [1, n = {n}]; got {ks[0]}..{ks[-1]}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for i, (label, counts) in enumerate(curves.items()):
        values = [mean_pass_at_k(n, counts, k) for k in ks]
        last = i == len(curves) - 1 and len(curves) > 1
        ax.plot(ks, values, "o-", lw=2.2 if last else 1.4, color="black" if last else None,
                label=f"{label} ({len(counts)} problems)")
    if greedy is not None:
        ax.axhline(greedy, color="gray", ls="--", lw=1.2, label=f"greedy decoding: {greedy:.0%}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel(f"k: samples allowed per problem (of n = {n} drawn)")
    ax.set_ylabel("pass@k (unbiased estimate)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title(title or f"pass@k rises with the number of samples (n = {n} per problem)")
    return ax


def plot_contamination(accuracies: Mapping[str, Mapping[str, float]], ax=None, title: str | None = None):
    """Grouped bars: ``accuracies[model][evaluation set]`` (shares in [0, 1]), one group per model.

    Each bar is labelled with its value in percent. Returns the Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    models = list(accuracies)
    if not models:
        raise ValueError("accuracies is empty: give {model: {evaluation set: accuracy}}")
    sets = list(dict.fromkeys(name for m in models for name in accuracies[m]))
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    width = 0.8 / len(sets)
    x = np.arange(len(models))
    for j, name in enumerate(sets):
        values = [accuracies[m].get(name, math.nan) for m in models]
        bars = ax.bar(x + (j - (len(sets) - 1) / 2) * width, values, width, label=name)
        for bar, v in zip(bars, values, strict=True):
            if not math.isnan(v):
                ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.0%}", ha="center", va="bottom",
                        fontsize=9)
    ax.set_xticks(x, models)
    ax.set_ylim(0, 1.12)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("exact match (greedy)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)
    ax.set_title(title or "Accuracy on leaked and fresh test problems")
    return ax


__all__ = ["funnel_rows", "plot_data_funnel", "plot_s_curve", "plot_pass_at_k", "plot_contamination"]
