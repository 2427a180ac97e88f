import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlakit
from mlakit import ModelConfig, list_presets
from mlakit.config import PRESETS


def test_list_presets_has_the_required_models():
    names = list_presets()
    for name in ("nano", "deepseek-v2", "deepseek-v2-lite", "deepseek-v3", "llama3-70b-gqa", "llama3-70b-mha"):
        assert name in names
    assert mlakit.list_presets() == names


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid_and_round_trips(name):
    cfg = ModelConfig.from_preset(name)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="valid presets: nano, small, deepseek-v2"):
        ModelConfig.from_preset("deepseek-v4")


def test_real_shapes_follow_reference():
    v3 = ModelConfig.from_preset("deepseek-v3")
    assert (v3.num_hidden_layers, v3.hidden_size, v3.num_attention_heads) == (61, 7168, 128)
    assert (v3.q_lora_rank, v3.kv_lora_rank, v3.qk_nope_head_dim, v3.qk_rope_head_dim, v3.v_head_dim) == (1536, 512, 128, 64, 128)
    assert (v3.n_routed_experts, v3.n_shared_experts, v3.num_experts_per_tok, v3.n_group, v3.topk_group) == (256, 1, 8, 8, 4)
    assert (v3.scoring_func, v3.norm_topk_prob, v3.routed_scaling_factor, v3.first_k_dense_replace) == ("sigmoid", True, 2.5, 3)
    assert (v3.intermediate_size, v3.moe_intermediate_size, v3.vocab_size) == (18432, 2048, 129280)
    v2 = ModelConfig.from_preset("deepseek-v2")
    assert (v2.num_hidden_layers, v2.hidden_size, v2.n_routed_experts, v2.n_shared_experts) == (60, 5120, 160, 2)
    assert (v2.scoring_func, v2.norm_topk_prob, v2.routed_scaling_factor, v2.n_group, v2.topk_group) == ("softmax", False, 16.0, 8, 3)
    lite = ModelConfig.from_preset("deepseek-v2-lite")
    assert lite.q_lora_rank is None and lite.num_hidden_layers == 27 and lite.n_routed_experts == 64
    assert lite.moe_intermediate_size == 1408 and lite.num_attention_heads == 16


def test_overrides_and_variants():
    cfg = ModelConfig.from_preset("nano", hidden_size=64)
    assert cfg.hidden_size == 64
    mha = cfg.variant("mha")
    assert mha.attn_type == "mha" and mha.num_key_value_heads == mha.num_attention_heads
    assert mha.head_dim == cfg.head_dim
    mqa = cfg.variant("mqa")
    assert mqa.num_key_value_heads == 1
    gqa = cfg.variant("gqa", 2)
    assert gqa.num_key_value_heads == 2
    with pytest.raises(ValueError, match="num_key_value_heads"):
        cfg.variant("gqa")


def test_baseline_head_dim_defaults():
    cfg = ModelConfig(attn_type="mha", hidden_size=96, num_attention_heads=6)
    assert cfg.head_dim == 16 and cfg.num_key_value_heads == 6
    assert ModelConfig(attn_type="mla").head_dim == ModelConfig().qk_nope_head_dim


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"attn_type": "gqa", "num_attention_heads": 4, "num_key_value_heads": 3}, "num_key_value_heads"),
        ({"attn_type": "gqa", "num_attention_heads": 4, "num_key_value_heads": 8}, "num_key_value_heads"),
        ({"attn_type": "mqa", "num_key_value_heads": 2}, "num_key_value_heads"),
        ({"attn_type": "mla", "num_key_value_heads": 2}, "num_key_value_heads"),
        ({"qk_rope_head_dim": 15}, "qk_rope_head_dim"),
        ({"attn_type": "mha", "head_dim": 31}, "head_dim"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
        ({"n_group": 3}, "n_group"),
        ({"n_group": 8}, "n_group"),
        ({"topk_group": 3}, "topk_group"),
        ({"hidden_size": -1}, "hidden_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"vocab_size": 2.5}, "vocab_size"),
        ({"attn_type": "linear"}, "attn_type"),
        ({"scoring_func": "relu"}, "scoring_func"),
        ({"first_k_dense_replace": 9}, "first_k_dense_replace"),
        ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
        ({"rope_theta": float("nan")}, "rope_theta"),
        ({"q_lora_rank": 0}, "q_lora_rank"),
        ({"rope_scaling": {"type": "ntk", "factor": 2}}, "rope_scaling"),
        ({"rope_scaling": {"type": "yarn", "factor": 0.5}}, "rope_scaling"),
        ({"attention_dropout": 1.0}, "attention_dropout"),
        ({"norm_topk_prob": "yes"}, "norm_topk_prob"),
        ({"n_routed_experts": -8}, "n_routed_experts"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}=") as info:
        ModelConfig(**changes)
    assert "must" in str(info.value) or "leaves" in str(info.value) or "keeps" in str(info.value)


def test_error_message_says_the_allowed_values():
    with pytest.raises(ValueError) as info:
        ModelConfig(attn_type="gqa", num_attention_heads=4, num_key_value_heads=3)
    assert "num_key_value_heads=3" in str(info.value) and "num_attention_heads=4" in str(info.value)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="no field"):
        ModelConfig.from_dict({"hidden": 3})


FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]
BAD_VALUES = st.one_of(
    st.integers(min_value=-10**6, max_value=0),
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not (x > 0 and math.isfinite(x)) or x != int(x)),
    st.text(max_size=5),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(FIELDS), value=BAD_VALUES, base=st.sampled_from(list(PRESETS)))
def test_random_values_raise_value_error_naming_a_field_or_are_valid(field, value, base):
    """Any value in any field either builds a valid config or raises ValueError naming a field."""
    kwargs = {**PRESETS[base], field: value}
    try:
        cfg = ModelConfig(**kwargs)
    except ValueError as e:
        assert any(f"ModelConfig.{f}=" in str(e) for f in FIELDS), str(e)
    else:  # accepted: then it must really be valid
        cfg.validate()


@settings(max_examples=200, deadline=None)
@given(
    heads=st.integers(1, 16), kv=st.integers(1, 16), experts=st.integers(0, 16),
    k=st.integers(1, 16), groups=st.integers(1, 8), topk_group=st.integers(1, 8), rope=st.integers(1, 33),
)
def test_random_shapes_are_consistent_or_rejected(heads, kv, experts, k, groups, topk_group, rope):
    kwargs = dict(attn_type="gqa", num_attention_heads=heads, num_key_value_heads=kv, hidden_size=16 * heads,
                  n_routed_experts=experts, num_experts_per_tok=k, n_group=groups, topk_group=topk_group,
                  qk_rope_head_dim=rope)
    try:
        cfg = ModelConfig(**kwargs)
    except ValueError as e:
        assert any(f"ModelConfig.{f}=" in str(e) for f in FIELDS), str(e)
        return
    assert heads % cfg.num_key_value_heads == 0 and cfg.qk_rope_head_dim % 2 == 0
    if experts:
        assert k <= experts and experts % groups == 0 and topk_group <= groups
