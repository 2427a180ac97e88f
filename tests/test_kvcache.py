import pytest

from mlakit import ModelConfig
from mlakit.kvcache import (
    bytes_per_token,
    cache_bytes,
    comparison_table,
    decompose_v2_headline,
    dtype_bits,
    elements_per_token,
    elements_per_token_all_layers,
    equivalent_gqa_groups,
    format_table,
    ratio_to_mha,
)

V3 = ModelConfig.from_preset("deepseek-v3")
V2 = ModelConfig.from_preset("deepseek-v2")


def test_deepseek_v3_numbers_from_reference():
    assert elements_per_token(V3) == 576  # 512 + 64
    assert elements_per_token_all_layers(V3) == 35_136  # x 61 layers
    assert bytes_per_token(V3, "bf16") == 70_272
    assert cache_bytes(V3, seq_len=1) == 70_272
    assert elements_per_token(V3, "mha") == 32_768
    assert ratio_to_mha(V3) == pytest.approx(56.9, abs=0.05)
    assert elements_per_token(V3, "mla-expanded") == 40_960
    assert elements_per_token(V3, "mla-expanded") / elements_per_token(V3) == pytest.approx(71.1, abs=0.05)


def test_deepseek_v2_mla_equals_gqa_with_2_25_groups():
    assert elements_per_token(V2) == 576
    assert equivalent_gqa_groups(V2) == pytest.approx(2.25)
    assert elements_per_token(V2, "gqa", 2) < elements_per_token(V2) < elements_per_token(V2, "gqa", 3)


def test_v2_headline_decomposes_into_architecture_and_quantisation():
    d = decompose_v2_headline()
    assert d.v2_elements_per_token == 34_560
    assert d.dense67b_elements_per_token == 194_560
    assert d.architecture_saving == pytest.approx(0.822, abs=0.001)  # "about 82%"
    assert d.quantisation_saving == pytest.approx(0.625)  # 6 of 16 bits
    assert d.total_saving == pytest.approx(0.933, abs=0.0005)  # the headline 93.3%
    assert 1 - d.total_saving == pytest.approx((1 - d.architecture_saving) * (1 - d.quantisation_saving))


def test_baselines_scale_with_kv_heads():
    gqa = ModelConfig.from_preset("llama3-70b-gqa")
    assert elements_per_token(gqa) == 2 * 8 * 128
    assert elements_per_token(gqa, "mha") == 2 * 64 * 128
    assert elements_per_token(gqa, "mqa") == 2 * 128
    assert elements_per_token(ModelConfig.from_preset("llama3-70b-mha")) == elements_per_token(gqa, "mha")
    # 80 layers, bf16, 128k tokens: 40 GiB with GQA
    assert cache_bytes(gqa, 128 * 1024) == 2 * 8 * 128 * 80 * 2 * 128 * 1024


@pytest.mark.parametrize("dtype, bits", [("fp32", 32), ("bf16", 16), ("fp16", 16), ("fp8", 8), (6, 6), (4, 4)])
def test_cache_bytes_for_each_precision(dtype, bits):
    assert cache_bytes(V3, seq_len=1000, batch_size=2, dtype=dtype) == 35_136 * 1000 * 2 * bits // 8
    assert dtype_bits(dtype) == bits


def test_odd_bit_widths_round_up_to_whole_bytes():
    cfg = ModelConfig.from_preset("nano")  # 48 elements per token per layer, 4 layers
    assert cache_bytes(cfg, 1, dtype=3) == 72  # 192 elements x 3 bits = 576 bits
    assert bytes_per_token(cfg, 6) == 144
    tiny = cfg.replace(num_hidden_layers=1, kv_lora_rank=1, qk_rope_head_dim=2)
    assert cache_bytes(tiny, 1, dtype=3) == 2  # 9 bits round up to 2 bytes
    assert bytes_per_token(tiny, 3) == pytest.approx(9 / 8)


@pytest.mark.parametrize("bad", ["int3", 0, 65, True, None])
def test_bad_dtypes_are_refused(bad):
    with pytest.raises(ValueError, match="dtype"):
        cache_bytes(V3, 1, dtype=bad)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="seq_len"):
        cache_bytes(V3, -1)
    with pytest.raises(ValueError, match="attn_type"):
        elements_per_token(V3, "sparse")


def test_comparison_table_rows():
    rows = comparison_table(V3)
    assert [r["attention"] for r in rows] == ["mha", "gqa (g=8)", "mqa", "mla"]
    assert rows[-1]["bytes/token"] == 70_272
    assert rows[-1]["MHA / this"] == pytest.approx(56.89, abs=0.01)
    text = format_table(rows)
    assert "70,272" in text and "56.89" in text
