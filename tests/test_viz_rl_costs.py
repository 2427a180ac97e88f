import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mlakit.viz import plot_forgetting, plot_hacking, plot_measures, read_results, tradeoff  # noqa: E402
from mlakit.viz.rl_costs import series  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def run(tool_after: float, kl: float, steps: int = 12):
    rows = [{"step": -1, "acc_arithmetic": 0.9, "acc_toolcall": 1.0}]
    for s in range(steps):
        row = {"step": s, "kl": kl * s / steps, "reward_accuracy": 0.5 + 0.02 * s, "reward_sloppy": 0.5 + 0.04 * s,
               "reward_strict": 0.5 - 0.02 * s, "completion_length": 18 + s, "acc_arithmetic": None}
        if s == steps - 1:
            row.update(acc_arithmetic=0.95, acc_toolcall=tool_after)
        rows.append(row)
    return rows


def test_tradeoff_by_hand():
    cost = tradeoff(run(0.8, 0.12), window=2)
    assert math.isclose(cost["arithmetic_change"], 0.05) and math.isclose(cost["toolcall_change"], -0.2)
    assert math.isclose(cost["kl"], (0.12 * 10 / 12 + 0.12 * 11 / 12) / 2)
    assert math.isclose(cost["reward_change"], (0.5 + 0.02 * 10.5) - 0.5)  # last 2 steps minus the first step
    with pytest.raises(ValueError, match="acc_toolcall"):
        tradeoff([{"step": 0, "acc_arithmetic": 1.0}])


def test_read_results_keeps_the_header_and_the_rows(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("# command: python x.py run --beta 0\n# seed: 0\n# machine: CPU\nstep,kl,acc\n0,0.5,\n1,0.25,0.9\n")
    meta, rows = read_results(path)
    assert meta == {"command": "python x.py run --beta 0", "seed": "0", "machine": "CPU"}
    assert rows == [{"step": "0", "kl": "0.5", "acc": None}, {"step": "1", "kl": "0.25", "acc": "0.9"}]
    steps, kl = series(rows, "kl")
    assert steps.tolist() == [0.0, 1.0] and kl.tolist() == [0.5, 0.25]
    assert series(rows, "acc")[1].tolist() == [0.9]


def test_plots_draw_every_run():
    fig = plot_forgetting({"beta = 0": run(0.8, 0.12), "beta = 0.5": run(1.0, 0.01)}, title="t")
    left, right = fig.axes
    assert len(left.lines) == 4  # two skills per run
    assert len(right.collections) == 2  # one point per run
    fig = plot_hacking(run(1.0, 0.1), smooth=3)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="runs is empty"):
        plot_forgetting({})


def test_plot_measures_draws_each_measure_at_its_evaluation_steps():
    rows = run(0.8, 0.1)
    rows[0]["acc_refusal"], rows[-1]["acc_refusal"] = 1.0, 0.6
    fig = plot_measures(rows, {"acc_toolcall": "tool calls", "acc_refusal": "refusals"}, title="safety")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["tool calls", "refusals"]
    assert list(lines["refusals"].get_xdata()) == [-1, 11] and list(lines["refusals"].get_ydata()) == [1.0, 0.6]
    assert ax.get_title() == "safety"
    with pytest.raises(ValueError, match="acc_safety"):
        plot_measures(rows, {"acc_safety": "?"})
    with pytest.raises(ValueError, match="measures is empty"):
        plot_measures(rows, {})
