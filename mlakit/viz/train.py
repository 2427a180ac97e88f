"""Training curves: the parts of the loss against step, with the exact-match evaluations beside them.

:class:`mlakit.train.Trainer` logs one dict per step (``history``) with the
loss split into its parts (``loss_main``, ``loss_mtp``, ``loss_balance``; see
:class:`mlakit.model.LMOutput`) and one dict per evaluation (``evals``) with
whatever its ``eval_fn`` returned, usually ``exact_match``.

:func:`plot_training` draws the loss parts on a log scale (they span orders of
magnitude: the balance loss is alpha = 1e-4 times a number near one) and the
evaluations as points on a second y axis (a share, 0 to 1) that shares the
step axis, so one picture shows the loss falling and the answers becoming right.

The logged MTP loss is already weighted by lambda (``mtp_loss_weight``) and the
balance loss by alpha (``aux_loss_alpha``): the curves show what the optimizer
minimises, and the legend says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

LOSS_STYLE = {  # logged key -> (legend label, colour)
    "loss_main": ("main: next token", "tab:blue"),
    "loss_mtp": ("MTP: token after next (x lambda)", "tab:orange"),
    "loss_balance": ("sequence balance (x alpha)", "tab:green"),
}
EVAL_COLOR = "tab:red"


def _series(history: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that logged ``key`` (a record's step defaults to its index)."""
    steps, values = [], []
    for i, record in enumerate(history):
        if key in record and record[key] is not None:
            steps.append(record.get("step", i))
            values.append(float(record[key]))
    return np.asarray(steps), np.asarray(values, dtype=np.float64)


def plot_training(history, evals: Sequence[Mapping] | None = None, ax=None, metric: str = "exact_match",
                  title: str | None = None):
    """Loss parts against training step on a log scale, and ``metric`` of ``evals`` on a second axis.

    ``history`` is a list of per-step dicts (``Trainer.history``) or a Trainer,
    whose ``evals`` are then used unless ``evals`` is given. Each of
    ``loss_main``, ``loss_mtp`` and ``loss_balance`` that was logged becomes a
    curve; ``evals`` (dicts with ``step`` and ``metric``, a share in [0, 1])
    become red points on the right-hand axis, labelled in percent.
    Returns the Axes of the losses (the evaluation axis is its twin).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    if hasattr(history, "history"):  # a Trainer
        evals = getattr(history, "evals", None) if evals is None else evals
        history = history.history
    history = list(history)
    if not history:
        raise ValueError("history is empty: train for at least one step before plotting")
    if not any("loss_main" in r for r in history):
        raise ValueError(f"history records have no 'loss_main' (keys: {sorted(history[0])}); "
                         "pass Trainer.history, whose records hold the loss parts")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")

    for key, (label, color) in LOSS_STYLE.items():
        steps, values = _series(history, key)
        positive = values > 0  # a log axis cannot show 0
        if positive.any():
            ax.plot(steps[positive], values[positive], label=label, color=color, lw=1.4)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (cross-entropy in nats, log scale)")
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()

    points = [e for e in (evals or []) if metric in e]
    if points:
        right = ax.twinx()
        x = [e["step"] for e in points]
        y = [float(e[metric]) for e in points]
        right.plot(x, y, "o--", color=EVAL_COLOR, lw=1, ms=6, label=metric.replace("_", " "))
        right.set_ylim(-0.03, 1.03)
        right.yaxis.set_major_formatter(PercentFormatter(1.0))
        right.set_ylabel(metric.replace("_", " ") + " (held-out problems)", color=EVAL_COLOR)
        right.tick_params(axis="y", colors=EVAL_COLOR)
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=9,
              frameon=False)  # below the axes: the curves fill the whole plot area
    ax.set_title(title or "Training losses")
    return ax


__all__ = ["plot_training"]
