"""The cache dashboard without a browser: set widget values, read the state, compare with mlakit.kvcache."""

import matplotlib

matplotlib.use("Agg")

import base64  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import ipywidgets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from script_module import load_script  # noqa: E402

from mlakit import ModelConfig  # noqa: E402
from mlakit.kvcache import (  # noqa: E402
    bytes_per_token,
    cache_bytes,
    decompose_v2_headline,
    elements_per_token_all_layers,
    ratio_to_mha,
)
from mlakit.model import MiniDeepSeek  # noqa: E402
from mlakit.viz import CacheDashboard, cache_dashboard, parameter_count  # noqa: E402
from mlakit.viz.dashboard import MODEL_CHOICES, dashboard_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dash():
    return cache_dashboard("deepseek-v3")


@pytest.fixture(autouse=True)
def _reset(request):
    yield
    if "dash" in request.fixturenames:  # back to the defaults for the next test
        d = request.getfixturevalue("dash")
        d.set(preset="deepseek-v3", context=131_072, batch_size=1, precision="bf16", gpu="H100",
              kv_lora_rank=512, qk_rope_head_dim=64)


def _expected(cfg, context, batch, dtype):
    return {"cache_gb": cache_bytes(cfg, context, batch, dtype) / 1e9, "bytes_per_token": bytes_per_token(cfg, dtype),
            "ratio_to_mha": ratio_to_mha(cfg)}


def _assert_state(state, cfg, context, batch, dtype):
    for key, value in _expected(cfg, context, batch, dtype).items():
        assert state[key] == pytest.approx(value), key


def test_default_is_deepseek_v3_at_128k(dash):
    assert isinstance(dash, CacheDashboard)
    s = dash.state
    assert s["error"] is None
    assert s["bytes_per_token"] == 70_272 and s["elements_per_token"] == 576
    assert s["ratio_to_mha"] == pytest.approx(56.89, abs=0.005)
    _assert_state(s, ModelConfig.from_preset("deepseek-v3"), 131_072, 1, "bf16")
    assert "9.21 GB" in dash.numbers.value


def test_changing_controls_recomputes_from_kvcache(dash):
    c = dash.controls
    c["preset"].value = "deepseek-v2"
    c["context"].value = 4096
    c["batch_size"].value = 4
    c["precision"].value = "6-bit"
    v2 = ModelConfig.from_preset("deepseek-v2")
    _assert_state(dash.state, v2, 4096, 4, 6)
    assert dash.state["bytes_per_token"] == 34_560 * 6 / 8
    c["precision"].value = "fp8"
    _assert_state(dash.state, v2, 4096, 4, "fp8")


def test_mla_sliders_follow_the_model(dash):
    c = dash.controls
    for name in ("llama3-70b-gqa", "llama3-70b-mha", "deepseek-67b", "deepseek-v3-mha"):
        c["preset"].value = name
        assert c["kv_lora_rank"].disabled and c["qk_rope_head_dim"].disabled, name
        before = dict(dash.state)
        c["kv_lora_rank"].value = 64  # ignored for a model without MLA, never a crash
        assert dash.state["cache_gb"] == before["cache_gb"] and dash.state["error"] is None
        _assert_state(dash.state, dashboard_config(name), 131_072, 1, "bf16")
    assert dash.state["ratio_to_mha"] == 1.0  # deepseek-v3 with MHA
    c["preset"].value = "deepseek-v2-lite"
    assert not c["kv_lora_rank"].disabled and not c["qk_rope_head_dim"].disabled
    assert (c["kv_lora_rank"].value, c["qk_rope_head_dim"].value) == (512, 64)  # reset to the preset


def test_kv_lora_rank_and_rope_dim_follow_the_formula(dash):
    c = dash.controls
    c["kv_lora_rank"].value = 256
    s = dash.state
    assert s["elements_per_token"] == 256 + 64
    assert s["bytes_per_token"] == (256 + 64) * 61 * 2
    assert s["ratio_to_mha"] == pytest.approx(2 * 128 * 128 / (256 + 64))
    c["qk_rope_head_dim"].value = 32
    assert dash.state["elements_per_token"] == 256 + 32
    assert dash.state["cache_gb"] == pytest.approx((256 + 32) * 61 * 2 * 131_072 / 1e9)


def test_invalid_combination_is_reported_not_raised(dash):
    c = dash.controls
    c["qk_rope_head_dim"].value = 12  # even: valid
    assert dash.state["error"] is None
    c["qk_rope_head_dim"].value = 9  # RoPE rotates pairs: the config refuses an odd width
    assert "qk_rope_head_dim" in dash.state["error"]
    assert "Not a valid model" in dash.numbers.value
    c["qk_rope_head_dim"].value = 64
    assert dash.state["error"] is None and dash.state["elements_per_token"] == 576


def test_longest_context_beside_the_weights(dash):
    c = dash.controls
    c["preset"].value = "nano"
    nano = ModelConfig.from_preset("nano")
    total, _ = parameter_count(nano)
    bits_per_token = elements_per_token_all_layers(nano) * 16
    assert dash.state["gpus"] == 1
    assert dash.state["max_context"] == (80 * 10**9 * 8 - total * 16) // bits_per_token
    assert dash.state["max_context_cache_only"] == 80 * 10**9 * 8 // bits_per_token
    c["batch_size"].value = 8
    assert dash.state["max_context"] == (80 * 10**9 * 8 - total * 16) // (8 * bits_per_token)

    dash.set(preset="llama3-70b-gqa", batch_size=1)  # 141 GB of bf16 weights: more than one H100, less than a node
    llama = ModelConfig.from_preset("llama3-70b-gqa")
    total, _ = parameter_count(llama)
    assert dash.state["gpus"] == 8
    assert dash.state["max_context"] == (8 * 80 * 10**9 * 8 - total * 16) // (elements_per_token_all_layers(llama) * 16)
    assert "weights alone exceed one 80 GB H100" in dash.numbers.value

    c["preset"].value = "deepseek-v3"  # 1.3 TB of bf16 weights: more than a node of H100s
    assert dash.state["gpus"] == 0 and dash.state["max_context"] == 0 and not dash.state["fits"]
    assert "no context fits" in dash.numbers.value
    dash.set(precision="fp8", gpu="H200")
    assert dash.state["gpus"] == 8 and dash.state["fits"]
    assert dash.state["weights_gb"] == pytest.approx(parameter_count(ModelConfig.from_preset("deepseek-v3"))[0] / 1e9)


def test_headline_tab_matches_decomposition(dash):
    d = decompose_v2_headline()
    h = dash.state["headline"]
    assert h["total_saving"] == d.total_saving and h["architecture_saving"] == d.architecture_saving
    assert h["quantisation_saving"] == d.quantisation_saving
    assert h["dense67b_bytes_per_token"] == 194_560 * 2 and h["v2_bytes_per_token"] == 34_560 * 6 / 8
    assert "93.3%" in dash.headline.value and "82.2%" in dash.headline.value
    assert dash.headline_plot.outputs[0]["data"]["image/png"]


def test_plot_marks_the_chosen_context(dash):
    dash.controls["context"].value = 8192
    assert dash.plot.outputs[0]["data"]["image/png"]
    marker = next(line for line in dash.ax.get_lines() if line.get_label() == "chosen context")
    assert marker.get_xdata()[0] == 8192 and marker.get_ydata()[0] == pytest.approx(dash.state["cache_gb"])
    assert (dash.ax.get_xscale(), dash.ax.get_yscale()) == ("log", "log")
    assert "80 GB GPU (H100)" in [t.get_text() for t in dash.ax.get_legend().get_texts()]


def test_set_changes_several_controls_at_once(dash):
    dash.set(preset="deepseek-v2-lite", kv_lora_rank=128, precision="fp32", context=2048)
    lite = ModelConfig.from_preset("deepseek-v2-lite", kv_lora_rank=128)
    _assert_state(dash.state, lite, 2048, 1, "fp32")
    with pytest.raises(ValueError, match="no control"):
        dash.set(colour="red")


def test_widget_and_display(dash):
    assert dash.widget.titles == ("KV cache", "V2 headline")
    bundle = dash._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert set(MODEL_CHOICES) == set(dash.controls["preset"].options[i][1] for i in range(len(MODEL_CHOICES)))
    assert {"deepseek-v3-mha", "deepseek-v2-mha", "deepseek-v2-lite-mha"} <= set(MODEL_CHOICES)
    with pytest.raises(ValueError, match="unknown model"):
        cache_dashboard("gpt-5")


def test_parameter_count_equals_the_model_and_the_papers():
    nano = ModelConfig.from_preset("nano")
    for cfg in (nano, nano.replace(n_routed_experts=0), nano.replace(q_lora_rank=None).variant("gqa", 2),
                nano.replace(tie_word_embeddings=True, num_nextn_predict_layers=0).variant("mha")):
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = MiniDeepSeek(cfg)
        assert parameter_count(cfg) == (model.num_parameters(), model.num_parameters(active=True))
    for name, (total_b, active_b) in {"deepseek-v3": (671, 37), "deepseek-v2": (236, 21),
                                      "deepseek-v2-lite": (15.7, 2.4), "llama3-70b-gqa": (70.6, 70.6)}.items():
        total, active = parameter_count(ModelConfig.from_preset(name))
        assert math.isclose(total / 1e9, total_b, rel_tol=0.01), name
        assert math.isclose(active / 1e9, active_b, rel_tol=0.12), name  # V2-Lite's 2.4B leaves out the embedding


# ---------------------------------------------------------------- layout at 1280 px, without a browser
# Sizes of ipywidgets 8's stylesheet (jupyterlab_widgets), in CSS px: a control's label takes
# description_width plus an 8 px margin and cuts its text with an ellipsis; a button has 10 px of padding
# on each side and a toggle button 2 px of margin on each side; a control in a box has 2 px of margin on
# each side; a slider's track has 6 px of margin on each side and its readout is at least 72 px wide
# (4 px margin); a dropdown's <select> keeps 20 px for its arrow, 4 px of padding and 2 px of border; a
# tab's contents have 15 px of padding and a 1 px border. Text is 13 px.
FONT_PX = 13
LABEL_MARGIN, BUTTON_PADDING, BUTTON_MARGIN, WIDGET_MARGIN = 8, 2 * 10, 2 * 2, 2 * 2
TRACK_MARGIN, READOUT_MIN, READOUT_MARGIN, SELECT_CHROME, TAB_CHROME = 2 * 6, 72, 4, 20 + 4 + 2, 2 * (15 + 1)
OUTPUT_AREA_1280 = 1100  # a notebook's output area in a 1280 px wide Chromium window (JupyterLab, side panel closed)


def text_px(text: str) -> float:
    """Width of ``text`` at 13 px in DejaVu Sans (wider than the usual UI fonts), plus 15% to spare."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = FT2Font(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans")))
    font.set_size(FONT_PX, 72)  # at 72 dpi a point is a px
    font.set_text(text)
    return 1.15 * font.get_width_height()[0] / 64


def px(length) -> float:
    """A CSS length in px: "140px", or "8em" at 13 px; anything else (auto, %, unset) fails the test."""
    length = str(length)
    if length.endswith("px"):
        return float(length[:-2])
    if length.endswith("em"):
        return float(length[:-2]) * FONT_PX
    pytest.fail(f"expected a fixed width in px or em, got {length!r}")


def _margin_left(layout) -> float:
    """The left margin in a CSS margin shorthand ("0 0 0 16px" is top, right, bottom, left)."""
    parts = (layout.margin or "0").split()
    left = parts[{1: 0, 2: 1, 3: 1, 4: 3}[len(parts)]]
    return 0.0 if left == "0" else px(left)


def test_text_px_measures_what_it_should():
    assert 100 < text_px("kv_lora_rank d_c") < 140 and text_px("fp8") < text_px("141 GB H200")
    assert px("140px") == 140 and px("8em") == 104
    assert _margin_left(ipywidgets.Layout(margin="0 0 0 16px")) == 16 and _margin_left(ipywidgets.Layout()) == 0


def test_every_label_is_shown_whole(dash):
    """No label is cut: "kv_lora_rank d_c" and "rope dim d_h^R" were, at description_width 8em."""
    for name, control in dash.controls.items():
        assert control.description, name
        label = px(control.style.description_width)
        assert text_px(control.description) <= label, (name, control.description, label)
    for name, control in dash.controls.items():
        assert px(control.style.description_width) + LABEL_MARGIN < px(control.layout.width), name


def test_every_value_is_shown_whole(dash):
    """The dropdown's longest model, every toggle button's text on one line, every slider's readout beside it."""
    c = dash.controls
    dropdown = c["preset"]
    select = px(dropdown.layout.width) - px(dropdown.style.description_width) - LABEL_MARGIN
    for label, _ in dropdown.options:  # "deepseek-v2-lite, with MHA" was cut
        assert text_px(label) + SELECT_CHROME <= select, label

    for name in ("precision", "gpu"):  # "141 GB H2..." was cut, the precision buttons wrapped
        toggle = c[name]
        button = px(toggle.style.button_width)
        for label in toggle._options_labels:
            assert text_px(label) <= button - BUTTON_PADDING, (name, label)
        # one line even if the padding came on top of button_width
        in_line = px(toggle.style.description_width) + LABEL_MARGIN + len(toggle.options) * (
            button + BUTTON_PADDING + BUTTON_MARGIN)
        assert in_line <= px(toggle.layout.width), name

    for name in ("context", "batch_size", "kv_lora_rank", "qk_rope_head_dim"):
        slider = c[name]
        assert slider.readout and slider.orientation == "horizontal", name
        values = [label for label, _ in slider.options] if name == "context" else [str(slider.min), str(slider.max)]
        assert max(text_px(v) for v in values) <= READOUT_MIN, name
        track = (px(slider.layout.width) - px(slider.style.description_width) - LABEL_MARGIN - TRACK_MARGIN
                 - READOUT_MIN - READOUT_MARGIN)
        assert track >= 200, (name, track)  # a track to drag, the readout beside it


def test_controls_and_numbers_side_by_side_at_1280px(dash):
    """The controls' column and the numbers fit one row of a 1280 px window and never shrink; a narrower
    output area puts the numbers below the controls instead of over the sliders' readouts."""
    column, numbers = dash.top.children
    assert column is dash.controls_box and numbers is dash.numbers
    assert list(column.children) == list(dash.controls.values())
    widest = max(px(control.layout.width) for control in dash.controls.values())
    assert px(column.layout.width) >= widest + WIDGET_MARGIN  # no scroll bar in the column
    row = px(column.layout.width) + _margin_left(numbers.layout) + px(numbers.layout.width)
    assert row + TAB_CHROME <= OUTPUT_AREA_1280, row
    assert column.layout.flex == numbers.layout.flex == "0 0 auto"  # fixed widths: nothing squeezed
    assert dash.top.layout.flex_flow == "row wrap"
    assert "width:100%" in dash.numbers.value.replace(" ", "")  # the table wraps its text inside its width
    assert dash.figure.get_figwidth() * 100 + TAB_CHROME <= OUTPUT_AREA_1280  # the plot's PNG, saved at 100 dpi


# ---------------------------------------------------------------- one dashboard per setting
def test_dashboard_built_with_settings_leaves_others_alone(dash):
    served = {"precision": "fp8", "gpu": "H200", "batch_size": 32}
    other = cache_dashboard("deepseek-v3", **served)
    assert other.widget is not dash.widget and not set(map(id, other.controls.values())) & set(
        map(id, dash.controls.values()))
    assert (dash.state["precision"], dash.state["batch_size"]) == ("bf16", 1)  # the first one as it was
    _assert_state(other.state, ModelConfig.from_preset("deepseek-v3"), 131_072, 32, "fp8")
    dash.set(**served)
    assert dash.state == other.state  # the same numbers as moving the first one there
    with pytest.raises(ValueError, match="no control"):
        cache_dashboard("nano", colour="red")


def test_copy_makes_a_new_dashboard_from_the_settings():
    v3 = cache_dashboard("deepseek-v3", precision="fp8", gpu="H200", batch_size=32)
    before = dict(v3.state)
    half = v3.copy(kv_lora_rank=256)
    mha = v3.copy(preset="deepseek-v3-mha")
    assert v3.state == before and v3.controls["kv_lora_rank"].value == 512  # the original is untouched
    v3_cfg = ModelConfig.from_preset("deepseek-v3")
    _assert_state(half.state, v3_cfg.replace(kv_lora_rank=256), 131_072, 32, "fp8")
    _assert_state(mha.state, v3_cfg.variant("mha"), 131_072, 32, "fp8")
    assert "8,384 GB" in mha.numbers.value and "e+" not in mha.numbers.value  # GB without an exponent
    half.controls["kv_lora_rank"].value = 128  # moving the copy moves only the copy
    assert v3.controls["kv_lora_rank"].value == 512 and half.state["elements_per_token"] == 128 + 64
    lite = half.copy(preset="deepseek-v2-lite")  # a new preset brings its own MLA sliders...
    assert lite.controls["kv_lora_rank"].value == 512 and lite.state["batch_size"] == 32
    assert half.copy(preset="deepseek-v2-lite", kv_lora_rank=64).state["elements_per_token"] == 64 + 64  # ...unless given
    assert mha.copy(preset="deepseek-v2").controls["kv_lora_rank"].value == 512
    assert mha.settings().keys() == {"preset", "context", "batch_size", "precision", "gpu"}  # no MLA sliders for MHA


def test_display_has_a_png_and_numbers_where_widgets_cannot_show(dash):
    bundle = dash._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == dash.widget.model_id
    png = bundle["image/png"]
    assert png == dash.plot.outputs[0]["data"]["image/png"] and base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    text = bundle["text/plain"]
    assert not text.startswith("Tab(") and text == dash.summary()
    assert "deepseek-v3, 128k tokens x batch 1, bf16" in text and "9.21 GB" in text and "56.9x smaller" in text


# ---------------------------------------------------------------- the saved notebook keeps the widgets it shows
def test_saved_widget_state_keeps_what_is_displayed():
    import nbformat

    rn = load_script("run_notebooks")
    view = rn.WIDGET_VIEW

    def model(name, **state):
        return {"model_name": name, "model_module": "@jupyter-widgets/controls", "model_module_version": "2.0.0",
                "state": {"_model_name": name, **state}}

    states = {"tab": model("TabModel", children=["IPY_MODEL_box"], layout="IPY_MODEL_l1"),
              "box": model("VBoxModel", children=["IPY_MODEL_out"]), "l1": model("LayoutModel"),
              "out": model("OutputModel", outputs=[{"output_type": "display_data",
                                                   "data": {view: {"model_id": "inner"}}}]),
              "inner": model("HTMLModel"), "unshown": model("TabModel", children=["IPY_MODEL_l2"]),
              "l2": model("LayoutModel")}
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("dash", outputs=[nbformat.v4.new_output(
        "display_data", data={view: {"model_id": "tab", "version_major": 2, "version_minor": 0},
                              "text/plain": "dashboard"})])]
    nb.metadata["widgets"] = {rn.WIDGET_STATE: {"state": states, "version_major": 2, "version_minor": 0}}
    assert rn.keep_displayed_widgets(nb) == 2
    assert set(nb.metadata["widgets"][rn.WIDGET_STATE]["state"]) == {"tab", "box", "l1", "out", "inner"}
    nb.cells[0].outputs = []
    rn.keep_displayed_widgets(nb)
    assert "widgets" not in nb.metadata


def test_lesson_04_saves_its_dashboards_with_a_png():
    """The executed lesson holds the state of every widget it displays, and a PNG beside each dashboard."""
    import nbformat

    rn = load_script("run_notebooks")
    nb = nbformat.read(ROOT / "notebooks" / "04_mla_inference.ipynb", as_version=4)
    states = nb.metadata["widgets"][rn.WIDGET_STATE]["state"]
    shown = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if rn.WIDGET_VIEW in output.get("data", {}):
                shown += 1
                assert output["data"]["image/png"] and output["data"]["text/plain"].startswith("KV-cache dashboard")
                assert "nbval-ignore-output" in cell.metadata.get("tags", [])  # nbval skips the widget's text
                todo, seen = set(), set()
                rn._widget_refs(output["data"], todo)
                while todo:  # the dashboard and every widget inside it, down to layouts and styles
                    model_id = todo.pop()
                    assert model_id in states, model_id
                    if model_id not in seen:
                        seen.add(model_id)
                        rn._widget_refs(states[model_id]["state"], todo)
                assert {states[m]["model_name"] for m in seen} >= {"TabModel", "OutputModel", "ToggleButtonsModel"}
    assert shown >= 2  # the dashboard of section 4 and the one of the served setting
    assert rn.keep_displayed_widgets(nb) == 0  # nothing saved that is not shown


# ---------------------------------------------------------------- numbers and plot together
def test_numbers_and_plot_reach_the_page_together(dash, monkeypatch):
    """An update draws the PNG first, then sends the plot and the numbers back to back: the numbers never
    reach the page while the picture of their state is still being drawn (they arrived ~0.5 s before it)."""
    sent = []
    send = ipywidgets.Widget._send

    def record(self, msg, buffers=None):
        if msg.get("method") == "update":
            sent.append((self, set(msg["state"])))
        return send(self, msg, buffers)

    monkeypatch.setattr(ipywidgets.Widget, "_send", record)
    render = dash.render

    def slow_render():  # a busy kernel: anything sent while drawing shows a state without its picture
        out = render()
        sent.append(("rendered", None))
        return out

    monkeypatch.setattr(dash, "render", slow_render)
    for move in ({"context": 4096}, {"precision": "fp8"}, {"gpu": "H200"}, {"preset": "deepseek-v2-lite"}):
        sent.clear()
        dash.set(**move)
        views = [(w, keys) for w, keys in sent if w in (dash.plot, dash.numbers)]
        assert [w for w, _ in views] == [dash.plot, dash.numbers], move  # one message each, the picture first
        assert views[0][1] == {"outputs"} and views[1][1] == {"value"}, move
        first_view = next(i for i, (w, _) in enumerate(sent) if w in (dash.plot, dash.numbers))
        assert ("rendered", None) in sent[:first_view], move  # drawn before either view changed
        assert sent[first_view + 1][0] is dash.numbers, move  # nothing between the two
    png = base64.b64decode(dash.plot.outputs[0]["data"]["image/png"])
    assert dash.state["precision"] == "fp8" and "(fp8)" in dash.numbers.value
    assert any(t.get_text() == "KV cache (GB, fp8, batch 1)" for t in [dash.ax.yaxis.label]) and png[:4] == b"\x89PNG"


# ---------------------------------------------------------------- the legend inside the figure
LEGEND_CASES = [  # every legend the plot can have: 1 GPU, a node of 8, no fit, plain MHA, the longest labels
    ("deepseek-v3", {"precision": "fp8", "gpu": "H200"}),  # "left for the cache on 8 GPUs"
    ("deepseek-v3", {}),  # weights exceed a node: no "left for" line
    ("deepseek-v2-lite", {"precision": "fp8"}),  # "left for the cache on 1 GPU"
    ("deepseek-v2-lite-mha", {"precision": "6-bit", "gpu": "H200", "batch_size": 128}),
    ("llama3-70b-gqa", {"precision": "fp32"}),
    ("nano", {"context": 1024}),
]


@pytest.mark.parametrize(("preset", "values"), LEGEND_CASES)
def test_legend_lies_inside_the_figure(preset, values):
    """The legend, the title and the axis labels lie inside the figure (the PNG), and the legend does not
    cover the axes or their tick labels: "left for the cache on 8 GPUs" was cut at the right edge."""
    d = cache_dashboard(preset, **values)
    fig, ax = d.figure, d.ax
    fig.canvas.draw()  # what savefig draws
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert "chosen context" in texts and texts[0] == "MHA"
    if values.get("gpu") == "H200" and preset == "deepseek-v3":
        assert "left for the cache on 8 GPUs" in texts
    page = fig.bbox
    boxes = {"legend": legend.get_window_extent(renderer), "title": ax.title.get_window_extent(renderer),
             "x label": ax.xaxis.label.get_window_extent(renderer), "y label": ax.yaxis.label.get_window_extent(renderer)}
    for name, box in boxes.items():
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, (name, box, page)
    axes = ax.xaxis.get_tightbbox(renderer)  # the axes' bottom edge, its tick labels and the x label
    assert boxes["legend"].y1 <= min(axes.y0, ax.get_window_extent(renderer).y0), (boxes["legend"], axes)
    assert ax.get_window_extent(renderer).height >= 0.6 * page.height  # the plot keeps most of the figure


def test_toggle_buttons_labels_sit_beside_their_buttons(dash):
    """ipywidgets 8 draws a ToggleButtons' label above its buttons; the inline class puts it beside them,
    right-aligned at the same width as the sliders' labels (which their views give that class)."""
    for name in ("precision", "gpu"):
        control = dash.controls[name]
        assert isinstance(control, ipywidgets.ToggleButtons)
        assert {"widget-inline-hbox", "jupyter-widget-inline-hbox"} <= set(control._dom_classes), name
        assert control.style.description_width == dash.controls["context"].style.description_width
