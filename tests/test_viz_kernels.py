import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from mlakit.viz import plot_roofline, plot_split_kv  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_roofline_places_points_on_the_roof_and_names_their_bound():
    points = {"MHA decode": 1.0, "MLA decode": 241.8, "big GEMM": 2000.0}
    ax = plot_roofline(865, 3350, points)  # H800: ridge 865e12 / 3.35e12 = 258 FLOP/B
    xs, ys = ax.lines[0].get_data()
    assert max(ys) == pytest.approx(865)  # the flat roof
    assert ys[0] == pytest.approx(xs[0] * 3.35)  # the slanted roof: TFLOP/s = FLOP/B x TB/s
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [label.rsplit(", ", 1)[1] for label in labels] == ["memory-bound", "memory-bound", "compute-bound"]
    offsets = [c.get_offsets()[0] for c in ax.collections]
    assert offsets[0][1] == pytest.approx(3.35)  # 1 FLOP/B at 3.35 TB/s: 3.35 TFLOP/s
    assert offsets[2][1] == pytest.approx(865)
    h200 = plot_roofline(989, 4800, points)  # ridge 206 FLOP/B: the same MLA decode is past it
    assert h200.get_legend().get_texts()[1].get_text().endswith("compute-bound")
    with pytest.raises(ValueError, match="positive peaks"):
        plot_roofline(0, 1)


def test_split_kv_colours_what_each_split_reads_and_marks_empty_splits():
    ax = plot_split_kv([100, 30, 0], 100, 4, block=8)  # splits of 32 rows: 4 of them (32, 32, 32, 4)
    filled = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_fill()]
    assert sum(p.get_width() for p in filled) == 130  # every valid row once, nothing past a length
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("empty") == 3 + 4  # sequence 1: splits 1-3; sequence 2: all four
    assert "split-KV: 4 splits of 32 rows" in ax.get_title()
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 100\]"):
        plot_split_kv([101], 100, 2)
