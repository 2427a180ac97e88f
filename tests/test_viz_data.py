import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mlakit.data import (  # noqa: E402
    DataCard,
    RejectionResult,
    Sample,
    build_dataset,
    get_task,
    pass_at_k,
    s_curve,
)
from mlakit.viz import plot_contamination, plot_data_funnel, plot_pass_at_k, plot_s_curve  # noqa: E402
from mlakit.viz.data import funnel_rows  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _card(**counts) -> DataCard:
    card = DataCard("addition", {"max_digits": 2}, seed=0, generated=100, failed_verification=30,
                    exact_duplicates=20, near_duplicates=5, contaminated=10, filtered={"length": 3}, kept=32)
    for name, value in counts.items():
        setattr(card, name, value)
    return card


# ------------------------------------------------------------------ the funnel
def test_funnel_rows_follow_the_pipeline_and_end_at_kept():
    rows = funnel_rows(_card())
    assert rows == [("generated", 100, 0), ("verification", 70, 30), ("exact dedup", 50, 20),
                    ("near dedup", 45, 5), ("decontamination", 35, 10), ("filter: length", 32, 3)]
    assert funnel_rows(_card().to_dict()) == rows  # the card as saved works too


def test_funnel_rows_refuse_a_card_that_does_not_add_up_or_is_not_a_card():
    with pytest.raises(ValueError, match="does not add up"):
        funnel_rows(_card(kept=40))
    with pytest.raises(ValueError, match="no 'generated' count"):
        funnel_rows({"task": "x"})
    with pytest.raises(TypeError, match="DataCard"):
        funnel_rows([1, 2, 3])


def test_funnel_draws_left_and_removed_per_stage_top_to_bottom():
    ax = plot_data_funnel(_card())
    left, removed = ax.containers
    assert [b.get_width() for b in left] == [100, 70, 50, 45, 35, 32]
    assert [b.get_width() for b in removed] == [0, 30, 20, 5, 10, 3]
    assert [b.get_x() for b in removed] == [100, 70, 50, 45, 35, 32]  # stacked after what is left
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "generated" and labels[-1] == "filter: length"
    assert ax.yaxis_inverted()
    texts = [t.get_text() for t in ax.texts]
    assert "100 (100%)" in texts and "70 (70%)   -30" in texts and "32 (32%)   -3" in texts
    assert ax.get_xlabel() == "records" and "32 of 100" in ax.get_title()


def test_funnel_of_a_real_pipeline_card():
    task = get_task("wordproblem")
    evals = list(task.generate(5, seed=9))
    card = build_dataset(task, 200, seed=1, eval_items=evals, progress=False).card
    ax = plot_data_funnel(card, title="word problems")
    assert ax.get_title() == "word problems"
    assert ax.containers[0][-1].get_width() == card.kept


# ------------------------------------------------------------------ the S-curve
def test_s_curve_plots_the_formula_its_threshold_and_measured_points():
    ax = plot_s_curve(16, 8, measured=([0.5, 0.8], [0.06, 0.95]), pairs=200, threshold=0.8)
    curve = ax.get_lines()[0]
    xs, ys = curve.get_xdata(), curve.get_ydata()
    np.testing.assert_allclose(ys, s_curve(xs, 16, 8))
    vertical = [line.get_xdata()[0] for line in ax.get_lines()[1:3]]
    assert vertical[0] == pytest.approx((1 / 16) ** (1 / 8)) and vertical[1] == 0.8
    (bars,) = ax.containers  # the error bars of the measured points
    np.testing.assert_allclose(bars.lines[0].get_ydata(), [0.06, 0.95])
    assert "Jaccard" in ax.get_xlabel() and "candidate" in ax.get_ylabel()
    assert "16 bands of 8 rows" in ax.get_title()


def test_s_curve_without_measurements_and_with_mismatched_ones():
    ax = plot_s_curve(20, 5)
    assert len(ax.get_lines()) == 2 and not ax.containers
    ax = plot_s_curve(20, 5, measured=([0.5], [0.4]))  # no pair count: plain points
    assert len(ax.get_lines()) == 3
    with pytest.raises(ValueError, match="differ in length"):
        plot_s_curve(20, 5, measured=([0.5, 0.6], [0.4]))


# ------------------------------------------------------------------ pass@k
def _result(counts_by_difficulty: dict[int, list[int]], n: int) -> RejectionResult:
    samples, difficulties = [], []
    for d, counts in counts_by_difficulty.items():
        for c in counts:
            difficulties.append(d)
            samples += [Sample(None, "x", j < c, True, j) for j in range(n)]
    return RejectionResult(samples, [s for s in samples if s.correct], n, "first", difficulties)


def test_pass_at_k_of_a_rejection_result_has_a_curve_per_difficulty_and_one_for_all():
    result = _result({1: [8, 8, 6], 2: [1, 0, 3]}, n=8)
    ax = plot_pass_at_k(result, greedy=0.5)
    lines = ax.get_lines()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["difficulty 1 (3 problems)", "difficulty 2 (3 problems)", "all problems (6 problems)"]
    assert list(lines[0].get_xdata()) == [1, 2, 4, 8]
    hard = [np.mean([pass_at_k(8, c, k) for c in (1, 0, 3)]) for k in (1, 2, 4, 8)]
    np.testing.assert_allclose(lines[1].get_ydata(), hard)
    np.testing.assert_allclose(lines[2].get_ydata(), [result.pass_at_k(k) for k in (1, 2, 4, 8)])
    assert lines[3].get_ydata()[0] == 0.5 and "greedy" in labels[3]
    assert ax.get_xscale() == "log" and "pass@k" in ax.get_ylabel()


def test_pass_at_k_from_counts_a_mapping_and_chosen_ks():
    ax = plot_pass_at_k([0, 3, 10], n=10, ks=[1, 5, 10])
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 5, 10]
    assert line.get_ydata()[-1] == pytest.approx(2 / 3)  # two of three problems have a correct sample
    ax = plot_pass_at_k({"t = 0.5": [1, 2], "t = 1.0": [3, 4]}, n=6)
    assert len(ax.get_lines()) == 2 and list(ax.get_lines()[0].get_xdata()) == [1, 2, 4, 6]
    single = _result({1: [2, 3]}, n=4)  # one difficulty: one curve
    assert len(plot_pass_at_k(single).get_lines()) == 1


def test_pass_at_k_refuses_bad_input():
    with pytest.raises(ValueError, match="give n"):
        plot_pass_at_k([1, 2])
    with pytest.raises(ValueError, match="at least one problem"):
        plot_pass_at_k([], n=4)
    with pytest.raises(ValueError, match="k must lie"):
        plot_pass_at_k([1, 2], n=4, ks=[1, 8])


# ------------------------------------------------------------------ contamination
def test_contamination_bars_grouped_by_model_and_labelled():
    acc = {"contaminated": {"leaked test": 0.9, "fresh test": 0.6}, "decontaminated": {"leaked test": 0.58,
                                                                                       "fresh test": 0.6}}
    ax = plot_contamination(acc, title="leaks inflate")
    leaked, fresh = ax.containers
    assert [b.get_height() for b in leaked] == [0.9, 0.58] and [b.get_height() for b in fresh] == [0.6, 0.6]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["contaminated", "decontaminated"]
    assert {t.get_text() for t in ax.texts} == {"90%", "60%", "58%"}
    assert ax.get_title() == "leaks inflate"
    with pytest.raises(ValueError, match="empty"):
        plot_contamination({})
