import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mlakit.viz.sft import final_accuracies, plot_accuracy_curves, plot_r1_distillation  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


class _Trainer:  # what the plot reads from a Trainer: its evaluations
    def __init__(self, evals):
        self.evals = evals


class _Run:  # what it reads from an SFTRun: its trainer
    def __init__(self, evals):
        self.trainer = _Trainer(evals)


RUNS = {
    "answers only": [{"step": 50, "exact_match": 0.0}, {"step": 100, "exact_match": 0.01}],
    "SFT on traces": _Trainer([{"step": 50, "exact_match": 0.1}, {"step": 100, "exact_match": 0.9}]),
    "both": _Run([{"step": 50, "exact_match": 0.05}, {"step": 100, "other": 3}, {"step": 100, "exact_match": 0.5}]),
}


def test_one_line_per_run_with_its_evaluations_in_percent():
    ax = plot_accuracy_curves(RUNS, title="traces win")
    assert ax.get_title() == "traces win" and ax.get_xlabel() == "training step"
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == list(RUNS)
    assert list(lines[1].get_xdata()) == [50, 100] and list(lines[1].get_ydata()) == [0.1, 0.9]
    assert list(lines[2].get_xdata()) == [50, 100] and list(lines[2].get_ydata()) == [0.05, 0.5]  # other metrics skipped
    assert ax.yaxis.get_major_formatter()(0.5, 0) == "50%"
    lo, hi = ax.get_ylim()
    assert lo < 0 and hi > 1
    assert [t.get_text() for t in ax.texts] == ["1%", "90%", "50%"]  # the last value at the end of each line
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(RUNS)


def test_final_accuracies_are_the_last_evaluations():
    assert final_accuracies(RUNS) == {"answers only": 0.01, "SFT on traces": 0.9, "both": 0.5}


@pytest.mark.parametrize("runs, message", [({}, "empty"), ({"x": [{"step": 1, "loss": 2.0}]}, "no evaluation")])
def test_runs_without_evaluations_are_refused(runs, message):
    with pytest.raises(ValueError, match=message):
        plot_accuracy_curves(runs)


def test_final_accuracies_refuse_a_run_without_the_metric():
    with pytest.raises(ValueError, match="no evaluation"):
        final_accuracies({"x": [{"step": 1}]})


def test_r1_bars_distilled_then_rl_with_values_and_source():
    distilled = {"Qwen-1.5B": 28.9, "Qwen-7B": 55.5, "Qwen-32B": 72.6}
    ax = plot_r1_distillation(distilled, {"Qwen-32B RL": 47.0}, title="distillation beats RL",
                              source="R1 v1, Tables 5 and 6")
    assert ax.get_title() == "distillation beats RL"
    assert [p.get_height() for p in ax.patches] == [28.9, 55.5, 72.6, 47.0]
    assert [p.get_hatch() or "" for p in ax.patches] == ["", "", "", "//"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Qwen-1.5B", "Qwen-7B", "Qwen-32B", "Qwen-32B RL"]
    assert [t.get_text() for t in ax.texts] == ["28.9", "55.5", "72.6", "47.0"]
    assert "AIME" in ax.get_ylabel() and ax.get_xlabel() == "R1 v1, Tables 5 and 6"
    assert len(ax.get_legend().get_texts()) == 2


def test_r1_bars_without_rl_and_empty_input():
    ax = plot_r1_distillation({"a": 1.0}, value_format="{:.0f}%")
    assert len(ax.patches) == 1 and len(ax.get_legend().get_texts()) == 1
    assert [t.get_text() for t in ax.texts] == ["1%"]
    with pytest.raises(ValueError, match="empty"):
        plot_r1_distillation({})
