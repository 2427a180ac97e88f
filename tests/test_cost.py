"""mlakit.cost: DeepSeek-V3's cost table (V3 Table 1 and §1), FLOPs from configs against hand counts, GPU hours,
money and the implied MFU, the dense comparison, and errors naming the argument."""

import math

import pytest

from mlakit import ModelConfig, cost
from mlakit.params import count_parameters


def test_v3_table_is_the_reports():
    rows = {r["stage"]: r for r in cost.v3_cost_table()}
    assert rows["pre-training"]["H800 GPU hours"] == 2_664_000 and rows["pre-training"]["USD"] == 5_328_000
    assert rows["context extension"]["H800 GPU hours"] == 119_000 and rows["context extension"]["USD"] == 238_000
    assert rows["post-training"]["H800 GPU hours"] == 5_000 and rows["post-training"]["USD"] == 10_000
    assert rows["total"]["H800 GPU hours"] == 2_788_000 == cost.V3_TOTAL_GPU_HOURS
    assert rows["total"]["USD"] == 5_576_000 == cost.V3_TOTAL_COST
    assert cost.V3_TOTAL_COST == cost.V3_TOTAL_GPU_HOURS * cost.V3_PRICE_PER_GPU_HOUR


def test_v3_per_trillion_tokens_and_days():
    per_trillion = cost.V3_GPU_HOURS["pre-training"] / (cost.V3_TOKENS / 1e12)
    assert per_trillion == pytest.approx(cost.V3_GPU_HOURS_PER_TRILLION_TOKENS, rel=1e-9)  # 180K
    assert round(per_trillion / cost.V3_GPUS / 24, 1) == 3.7  # "3.7 days on our cluster with 2048 H800 GPUs"


def test_matmul_parameters_of_v3():
    c = ModelConfig.from_preset("deepseek-v3")
    active = count_parameters(c, active=True)
    assert 37e9 < active < 38e9  # the report's "37B activated"
    assert cost.matmul_parameters(c) == active - 129280 * 7168  # the embedding is a lookup
    with_mtp = cost.matmul_parameters(c, include_mtp=True)
    assert with_mtp == count_parameters(c, active=True, include_mtp=True) - 129280 * 7168 + 129280 * 7168


def test_attention_flops_by_hand():
    c = ModelConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, q_lora_rank=None,
                    kv_lora_rank=4, qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=4, n_routed_experts=0,
                    first_k_dense_replace=1, num_nextn_predict_layers=0)
    # 6 x 1 layer x 2 heads x (6 + 4) x (3 + 1) / 2 positions = 240; without the mask, x 3 positions = 360
    assert cost.attention_flops_per_token(c, 3) == 240
    assert cost.attention_flops_per_token(c, 3, causal=False) == 360
    assert cost.training_flops_per_token(c, 3) == 6 * cost.matmul_parameters(c) + 240
    assert cost.training_flops(c, 1000, 3) == 1000 * (6 * cost.matmul_parameters(c) + 240)


def test_v3_attention_per_token_at_4k():
    c = ModelConfig.from_preset("deepseek-v3")
    assert cost.pretraining_seq_len(c) == 4096
    # 6 x 61 x 128 x (192 + 128) x 4097 / 2
    assert cost.attention_flops_per_token(c, 4096) == 6 * 61 * 128 * 320 * 4097 / 2


def test_gpu_hours_money_and_mfu_by_hand():
    assert cost.gpu_hours(3.6e18, 1e15, 0.5) == pytest.approx(2.0)
    assert cost.cost(2.0, 2.5) == 5.0
    assert cost.implied_mfu(3.6e18, 2.0, 1e15) == pytest.approx(0.5)
    e = cost.estimate(ModelConfig.from_preset("deepseek-v3"), 14.8e12, cost.H800_BF16_PEAK, 0.4, 2.0)
    assert e.seq_len == 4096 and e.flops == pytest.approx(e.flops_per_token * 14.8e12)
    assert e.cost == pytest.approx(2.0 * e.gpu_hours) and e.days_on(2048) == pytest.approx(e.gpu_hours / 2048 / 24)


def test_v3_implied_mfu_is_plausible():
    c = ModelConfig.from_preset("deepseek-v3")
    flops = cost.training_flops(c, cost.V3_TOKENS, 4096, include_mtp=True)
    mfu = cost.implied_mfu(flops, cost.V3_GPU_HOURS["pre-training"], cost.H800_BF16_PEAK)
    assert 0.35 < mfu < 0.45  # about 40% of the dense BF16 peak, 20% of FP8's
    assert cost.implied_mfu(flops, cost.V3_GPU_HOURS["pre-training"], cost.H800_FP8_PEAK) == pytest.approx(mfu / 2)


def test_dense_comparison():
    assert cost.LLAMA31_405B_GPU_HOURS / cost.V3_TOTAL_GPU_HOURS == pytest.approx(11.06, abs=0.01)
    assert cost.dense_flops_per_token(405e9) == 2.43e12
    v3 = ModelConfig.from_preset("deepseek-v3")
    ratio = cost.dense_flops_per_token(cost.LLAMA31_405B_PARAMETERS) / cost.training_flops_per_token(v3, 4096)
    assert 9 < ratio < 10.5


@pytest.mark.parametrize("call, words", [
    (lambda: cost.gpu_hours(1e20, 1e15, 0.0), "mfu=0.0"),
    (lambda: cost.gpu_hours(1e20, 1e15, 1.5), "mfu=1.5"),
    (lambda: cost.gpu_hours(1e20, -1, 0.4), "peak_flops=-1"),
    (lambda: cost.cost(10, "2"), "price_per_gpu_hour='2'"),
    (lambda: cost.training_flops(ModelConfig(), -5, 16), "tokens=-5"),
    (lambda: cost.attention_flops_per_token(ModelConfig(), 0), "seq_len=0"),
    (lambda: cost.implied_mfu(1e20, math.inf, 1e15), "gpu_hours=inf"),
    (lambda: cost.v3_cost_table(0), "price_per_gpu_hour=0"),
])
def test_bad_input_names_the_argument(call, words):
    with pytest.raises(ValueError, match=words):
        call()
