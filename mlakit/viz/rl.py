"""GRPO runs in pictures: rewards, held-out accuracy, completion length, k3 and entropy against step.

:class:`mlakit.rl.GRPOTrainer` logs one dict per step (``history``), named as TRL
logs them: ``reward`` and ``reward_<name>`` (the mean of each reward function over
the step's completions, e.g. ``reward_accuracy`` and ``reward_format``),
``completion_length`` (tokens, eos included, and ``completion_length_correct`` /
``_incorrect``), ``kl`` (the mean k3 estimate of KL(pi_theta || pi_ref), logged when
the trainer has a reference model), ``entropy`` (nats per completion token) and,
at the evaluation steps, ``held_out_accuracy`` (greedy).

:func:`plot_grpo` draws them in a grid of panels that share the step axis:

1. the mean of each reward function per step (a share of completions when the
   reward is 0 or 1), with the held-out greedy accuracy as points;
2. completion length, overall and for correct and incorrect completions;
3. k3, the KL to the reference (linear scale: it starts at exactly 0);
4. the entropy of the policy on its own samples.

Rollout metrics of a few prompts are noisy from step to step: ``smooth`` draws a
trailing moving average over that many steps on top of the raw values (faint).
A metric that was never logged leaves its panel with a note saying why.

:func:`plot_pass_maj_at_k` draws pass@k and maj@k against k for several models
(the base and the RL model): DeepSeekMath's test of whether RL adds capability
(pass@k at large k) or sharpens the distribution (maj@k and pass@1 rise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

REWARD_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")
ACCURACY_COLOR = "tab:red"
PANELS = ("reward", "length", "kl", "entropy")


def _series(history: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that logged ``key`` as a finite number (step defaults to the index)."""
    steps, values = [], []
    for i, record in enumerate(history):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            steps.append(record.get("step", i))
            values.append(float(value))
    return np.asarray(steps), np.asarray(values, dtype=np.float64)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start), same length as ``values``."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window={window!r} is invalid: must be an integer >= 1")
    values = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - window)
    return (sums[idx] - sums[start]) / (idx - start)


def _curve(ax, steps, values, label, color, smooth: int, lw: float = 1.6):
    """Raw values (faint when smoothed) and their moving average."""
    if smooth > 1:
        ax.plot(steps, values, color=color, lw=0.8, alpha=0.3)
        ax.plot(steps, moving_average(values, smooth), color=color, lw=lw, label=label)
    else:
        ax.plot(steps, values, color=color, lw=lw, label=label)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="gray", wrap=True)


def _reward_keys(history: Sequence[Mapping]) -> list[str]:
    """The per-function reward means logged (``reward_<name>``, not the std columns), in first-seen order."""
    keys: list[str] = []
    for record in history:
        for key in record:
            if key.startswith("reward_") and not key.endswith("_std") and key not in keys:
                keys.append(key)
    return keys


def plot_grpo(history, evals: Sequence[Mapping] | None = None, panels: Sequence[str] = PANELS, smooth: int = 10,
              accuracy_key: str = "held_out_accuracy", axes=None, title: str | None = None):
    """Panels of a GRPO run against step (see the module docstring); returns the array of Axes.

    ``history`` is ``GRPOTrainer.history`` (a list of per-step dicts) or the trainer, whose
    ``evals`` (the step-0 evaluation of the base included) are then used unless ``evals`` is given.
    ``evals``: dicts with ``step`` and ``accuracy_key``; without them the evaluations logged in
    ``history`` are drawn. ``panels`` picks and orders them among "reward", "length", "kl", "entropy".
    ``smooth`` is the moving-average window in steps (1: raw values only).
    ``accuracy_key`` names the held-out evaluation drawn as points on the reward panel.
    ``axes``: Axes to draw into, one per panel; ``title`` goes above the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    if hasattr(history, "history"):  # a trainer
        evals = getattr(history, "evals", None) if evals is None else evals
        history = history.history
    history = list(history)
    if not history:
        raise ValueError("history is empty: run at least one GRPO step before plotting")
    panels = list(panels)
    unknown = [p for p in panels if p not in PANELS]
    if unknown or not panels:
        raise ValueError(f"panels={panels!r} is invalid: choose among {', '.join(map(repr, PANELS))}")
    if axes is None:
        cols = 2 if len(panels) > 1 else 1
        rows = -(-len(panels) // cols)
        fig, grid = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), layout="constrained", sharex=True,
                                 squeeze=False)
        for extra in grid.flat[len(panels):]:
            extra.remove()
        axes = grid.flat[:len(panels)]
    axes = np.asarray(list(np.ravel(axes)), dtype=object)
    if len(axes) != len(panels):
        raise ValueError(f"{len(axes)} axes for {len(panels)} panels: give one Axes per panel")
    smooth_note = f" ({smooth}-step moving average)" if smooth > 1 else ""

    for ax, panel in zip(axes, panels, strict=True):
        if panel == "reward":
            keys = _reward_keys(history) or ["reward"]
            for i, key in enumerate(keys):
                steps, values = _series(history, key)
                if len(values):
                    _curve(ax, steps, values, key.removeprefix("reward_") + " reward (sampled)",
                           REWARD_COLORS[i % len(REWARD_COLORS)], smooth)
            steps, values = _series(evals if evals else history, accuracy_key)
            if len(values):
                ax.plot(steps, values, "o--", color=ACCURACY_COLOR, lw=1, ms=5,
                        label=accuracy_key.replace("_", " ") + " (greedy)")
            if all(key != "reward" for key in keys):
                ax.set_ylim(-0.03, 1.03)
                ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            ax.set_ylabel("mean reward per completion")
            ax.set_title("rewards" + smooth_note, fontsize=10)
            ax.legend(fontsize=8, loc="lower right")
        elif panel == "length":
            styles = [("completion_length", "all", "black"), ("completion_length_correct", "correct", "tab:green"),
                      ("completion_length_incorrect", "incorrect", "tab:red")]
            drawn = False
            for key, label, color in styles:
                steps, values = _series(history, key)
                if len(values):
                    _curve(ax, steps, values, label, color, smooth, lw=1.8 if label == "all" else 1.2)
                    drawn = True
            if drawn:
                ax.legend(fontsize=8)
            else:
                _note(ax, "no completion_length logged")
            ax.set_ylabel("tokens per completion (eos included)")
            ax.set_title("completion length" + smooth_note, fontsize=10)
        elif panel == "kl":
            steps, values = _series(history, "kl")
            if len(values):
                _curve(ax, steps, values, "k3", "tab:purple", smooth)
            else:
                _note(ax, "no k3 logged: the trainer had no reference model\n(beta = 0 and no ref_model given)")
            ax.set_ylabel("k3 estimate of KL(policy || reference), nats/token")
            ax.set_title("distance from the reference (k3)" + smooth_note, fontsize=10)
        else:  # entropy
            steps, values = _series(history, "entropy")
            if len(values):
                _curve(ax, steps, values, "entropy", "tab:cyan", smooth)
            else:
                _note(ax, "no entropy logged")
            ax.set_ylabel("entropy, nats per token")
            ax.set_title("policy entropy on its samples" + smooth_note, fontsize=10)
        ax.grid(True, alpha=0.3)
        spec = ax.get_subplotspec()
        ax.set_xlabel("GRPO step" if spec is None or spec.is_last_row() else "")  # shared axis: label it once
    if title:
        axes[0].figure.suptitle(title)
    return axes


def plot_pass_maj_at_k(curves: Mapping[str, Mapping[str, Mapping[int, float]]], ax=None, title: str | None = None):
    """pass@k (solid) and maj@k (dashed) against k on a log-2 axis, one colour per model.

    ``curves[model]`` is a mapping with ``"pass"`` and/or ``"maj"``, each {k: share in [0, 1]}
    (``mlakit.data.mean_pass_at_k`` gives the first). Returns the Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    if not curves:
        raise ValueError("curves is empty: give {model: {'pass': {k: value}, 'maj': {k: value}}}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    ks_all: set[int] = set()
    for i, (model, kinds) in enumerate(curves.items()):
        color = REWARD_COLORS[i % len(REWARD_COLORS)]
        unknown = set(kinds) - {"pass", "maj"}
        if unknown or not kinds:
            raise ValueError(f"curves[{model!r}] must hold 'pass' and/or 'maj'; got {sorted(kinds)}")
        for kind, style in (("pass", "o-"), ("maj", "s--")):
            if kind in kinds:
                ks = sorted(kinds[kind])
                ks_all.update(ks)
                ax.plot(ks, [kinds[kind][k] for k in ks], style, color=color, lw=1.6, ms=5,
                        label=f"{model}: {kind}@k")
    ks = sorted(ks_all)
    if ks[0] < 1:
        raise ValueError(f"k must be >= 1; got {ks[0]}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("k: samples per problem")
    ax.set_ylabel("share of held-out problems solved")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "pass@k (any of k right) and maj@k (the most common answer right)")
    return ax


__all__ = ["plot_grpo", "plot_pass_maj_at_k", "moving_average"]
