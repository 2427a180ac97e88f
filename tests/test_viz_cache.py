"""Cache tables and plots of mlakit.viz against the reference numbers and the formulas."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mlakit import ModelConfig  # noqa: E402
from mlakit.kvcache import cache_bytes, comparison_table, decompose_v2_headline  # noqa: E402
from mlakit.viz import (  # noqa: E402
    cache_table,
    measure_cache_bytes,
    models_table,
    plot_cache_vs_context,
    plot_measured_vs_theory,
    plot_v2_headline,
)
from mlakit.viz.cache import context_label, dtype_label, gpu_label  # noqa: E402

V3 = ModelConfig.from_preset("deepseek-v3")
NANO = ModelConfig.from_preset("nano")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _row(rows, **match):
    (row,) = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return row


def test_cache_table_deepseek_v3_matches_reference():
    rows = cache_table(V3)
    assert [r["attention"] for r in rows] == ["mha", "gqa (g=8)", "mqa", "mla"]
    mla = _row(rows, attention="mla")
    assert mla["elements/token/layer"] == 576  # 512 + 64
    assert mla["bytes/token"] == 70_272  # 576 x 61 layers x 2 bytes
    assert mla["MHA / this"] == pytest.approx(56.89, abs=0.005)
    assert mla["GB @ 128k"] == pytest.approx(70_272 * 131_072 / 1e9)
    assert _row(rows, attention="mha")["elements/token/layer"] == 2 * 128 * 128


def test_cache_table_extends_comparison_table():
    llama = ModelConfig.from_preset("llama3-70b-gqa")
    rows = cache_table(llama, seq_len=4096, dtype="fp8")
    base = comparison_table(llama, 4096, "fp8")
    assert [r["attention"] for r in rows] == ["mha", "gqa (g=8)", "mqa"]  # no MLA row for a GQA model
    for row, ref in zip(rows, base, strict=True):
        assert row["GB @ 4k"] == ref["GB @ context"]
        assert {k: v for k, v in row.items() if k != "GB @ 4k"} == {k: v for k, v in ref.items() if k != "GB @ context"}


def test_models_table_rows():
    rows = models_table()
    assert [r["model"] for r in rows] == ["deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "llama3-70b-gqa",
                                          "llama3-70b-mha", "nano"]
    v3 = _row(rows, model="deepseek-v3")
    assert (v3["attention"], v3["elements/token/layer"], v3["bytes/token"]) == ("mla", 576, 70_272)
    assert v3["MHA / this"] == pytest.approx(56.89, abs=0.005)
    gqa = _row(rows, model="llama3-70b-gqa")
    assert (gqa["attention"], gqa["elements/token/layer"], gqa["MHA / this"]) == ("gqa (g=8)", 2 * 8 * 128, 8.0)
    assert gqa["bytes/token"] == 2 * 8 * 128 * 80 * 2  # K and V, 8 heads, d_h 128, 80 layers, bf16
    assert _row(rows, model="llama3-70b-mha")["MHA / this"] == 1.0
    lite = _row(rows, model="deepseek-v2-lite")
    assert lite["MHA / this"] == pytest.approx(2 * 16 * 128 / 576)  # only 16 heads: MLA saves 7x, not 57x
    for row in rows:
        assert row["GB @ 128k"] == pytest.approx(row["bytes/token"] * 131_072 / 1e9)


@pytest.fixture(scope="module")
def measured():
    """nano with MHA and with MLA, batch 2: one measurement shared by the tests below.

    One torch thread: nano's matrices are tiny, and on a busy machine a second
    thread waiting at every op's barrier made this 100x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state = torch.random.get_rng_state()
        data = {"nano, MHA": measure_cache_bytes(NANO.variant("mha"), contexts=CONTEXTS, batch_size=2),
                "nano, MLA": measure_cache_bytes(NANO, contexts=CONTEXTS, batch_size=2)}
        assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    finally:
        torch.set_num_threads(threads)
    return data


CONTEXTS = (8, 16, 32)


@pytest.mark.parametrize("attn", ["mha", "mla"])
def test_measured_cache_bytes_equal_theory_for_nano(measured, attn):
    cfg = NANO if attn == "mla" else NANO.variant("mha")
    rows = measured[f"nano, {attn.upper()}"]
    per_token = 48 if attn == "mla" else 2 * 4 * 32  # d_c + d_R = 32 + 16; 2 n_h d_h = 2 x 4 x 32
    for row, context in zip(rows, CONTEXTS, strict=True):
        assert row["context"] == row["filled"] == context
        assert row["attention"] == attn
        assert row["measured_bytes"] == row["theory_bytes"] == cache_bytes(cfg, context, 2, dtype="fp32")
        assert row["measured_bytes"] == per_token * cfg.num_hidden_layers * context * 2 * 4  # batch 2, fp32


def test_measure_refuses_contexts_past_the_model():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        measure_cache_bytes(NANO, contexts=(NANO.max_position_embeddings + 1,))


def _assert_labelled_log_axes(ax, xlog=True, ylog=True):
    assert isinstance(ax, plt.Axes)
    assert "tokens" in ax.get_xlabel()
    assert ax.get_ylabel() and ax.get_title()
    assert (ax.get_xscale(), ax.get_yscale()) == ("log" if xlog else "linear", "log" if ylog else "linear")


def test_plot_cache_vs_context_labels_gpus_and_states_the_finding():
    ax = plot_cache_vs_context(V3, kinds=("mha", "gqa", "mqa", "mla"), gpu_memory_gb=(80, 141))
    _assert_labelled_log_axes(ax)
    assert "GB" in ax.get_ylabel() and "bf16" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "80 GB GPU (H100)" in legend and "141 GB GPU (H200)" in legend
    assert "56.9x" in ax.get_title()
    mla = next(line for line in ax.get_lines() if line.get_label() == "MLA")
    assert mla.get_ydata()[-1] == pytest.approx(cache_bytes(V3, int(mla.get_xdata()[-1])) / 1e9)


def test_plot_cache_vs_context_custom_precision_and_title():
    ax = plot_cache_vs_context(V3, kinds=("mla",), dtype=6, gpu_memory_gb=(48,), title="given")
    assert ax.get_title() == "given" and "6-bit" in ax.get_ylabel()
    assert "48 GB GPU" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_plot_measured_vs_theory(measured):
    ax = plot_measured_vs_theory(measured)
    _assert_labelled_log_axes(ax)
    assert "bytes" in ax.get_ylabel()
    assert "equal the formula" in ax.get_title() and "5.33x" in ax.get_title()  # 256 / 48
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["nano, MHA: formula", "nano, MHA: measured", "nano, MLA: formula", "nano, MLA: measured"]


def test_plot_v2_headline_annotates_the_decomposition():
    d = decompose_v2_headline()
    ax = plot_v2_headline()
    text = " ".join(t.get_text() for t in ax.texts)
    assert "93.3" in text and f"{100 * d.architecture_saving:.1f}" in text
    assert "93.3%" in ax.get_title()
    assert "kB" in ax.get_ylabel()
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx([194_560 * 2 / 1e3, 34_560 * 2 / 1e3, 34_560 * 6 / 8 / 1e3])


def test_labels():
    assert [context_label(t) for t in (100, 1024, 131_072, 1_048_576, 1536)] == ["100", "1k", "128k", "1M", "1,536"]
    assert (dtype_label("bf16"), dtype_label(6), dtype_label(torch.float32)) == ("bf16", "6-bit", "fp32")
    assert (gpu_label(80), gpu_label(141), gpu_label(24)) == ("80 GB GPU (H100)", "141 GB GPU (H200)", "24 GB GPU")
