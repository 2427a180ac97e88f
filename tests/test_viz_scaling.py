import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mlakit.distributed import bubble, simulate_1f1b  # noqa: E402
from mlakit.viz import plot_bubbles, plot_overlap, plot_pipeline_timeline  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_timeline_draws_one_bar_per_op_and_ends_at_the_makespan():
    ops = simulate_1f1b(4, 6, 1.0, 2.0)
    ax = plot_pipeline_timeline(ops, title="1F1B")
    assert len(ax.patches) == len(ops) == 48
    assert ax.get_xlim()[1] == max(op.end for op in ops) == (6 + 3) * 3.0  # (m + PP - 1)(F + B) at F = B / 2
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"stage {s}" for s in range(4)]


def test_bubbles_plot_the_formulas():
    ax = plot_bubbles([4, 8, 16], 1.0, 2.0, 1.0, 2.5)
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines["1F1B"] == [bubble("1F1B", pp, 1.0, 2.0) for pp in (4, 8, 16)]
    assert lines["DualPipe"] == [bubble("DualPipe", pp, 1.0, 2.0, 1.0, 2.5) for pp in (4, 8, 16)]
    share = plot_bubbles([16], 1.0, 2.0, 1.0, 2.5, microbatches=30)
    assert share.get_lines()[0].get_ydata()[0] == pytest.approx(45 / (45 + 90))


def test_overlap_hides_communication_under_compute():
    ax = plot_overlap([2, 2, 2], [1, 1, 1])
    assert ax.get_title() == "serial 9 vs overlapped 7"  # the last chunk's comm cannot hide
