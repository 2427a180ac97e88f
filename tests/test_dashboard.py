"""The cache dashboard without a browser: set widget values, read the state, compare with mlakit.kvcache."""

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

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
