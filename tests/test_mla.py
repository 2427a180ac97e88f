import pytest
import torch
from hf_reference import causal_additive_mask, hf_attention
from hypothesis import given, settings
from hypothesis import strategies as st

from mlakit import ModelConfig, kvcache
from mlakit.attention import CacheFullError
from mlakit.generate import generate
from mlakit.mla import LatentCache, MultiHeadLatentAttention
from mlakit.model import MiniDeepSeek

NANO = ModelConfig.from_preset("nano", n_routed_experts=0)
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1,
        "mscale": 0.707, "mscale_all_dim": 0.707}
CONFIGS = {
    "q_lora": NANO,
    "no_q_lora": NANO.replace(q_lora_rank=None),
    "halves_rope": NANO.replace(rope_interleave=False),
    "yarn": NANO.replace(rope_scaling=YARN, max_position_embeddings=256),
    "v_differs": NANO.replace(v_head_dim=24, qk_nope_head_dim=16, qk_rope_head_dim=8, num_attention_heads=3, hidden_size=96),
}


def _layer(cfg, seed=0):
    torch.manual_seed(seed)
    layer = MultiHeadLatentAttention(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so a missing norm would show
        for name, p in layer.named_parameters():
            if "layernorm" in name:
                p.uniform_(0.5, 1.5)
    return layer


@pytest.mark.parametrize("name", list(CONFIGS))
def test_naive_and_absorbed_paths_agree_on_prefill(name):
    cfg = CONFIGS[name]
    layer = _layer(cfg)
    x = torch.randn(3, 9, cfg.hidden_size)
    torch.testing.assert_close(layer(x, mode="absorbed"), layer(x, mode="naive"), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_paths_agree_over_many_decode_steps_after_prefill(name):
    cfg = CONFIGS[name]
    layer = _layer(cfg, seed=1)
    x = torch.randn(2, 20, cfg.hidden_size)
    full = layer(x, mode="naive")  # no cache, all positions at once
    for path in ("naive", "absorbed"):
        cache = LatentCache.for_config(cfg.replace(num_hidden_layers=1), batch_size=2, max_len=20)
        outs = [layer(x[:, :8], cache)]  # prefill: naive by default
        outs += [layer(x[:, t:t + 1], cache, mode=path) for t in range(8, 20)]
        torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 3), prefill=st.integers(1, 5), steps=st.integers(0, 4), q_lora=st.booleans(),
       interleave=st.booleans())
def test_paths_agree_for_any_lengths(batch, prefill, steps, q_lora, interleave):
    cfg = NANO.replace(q_lora_rank=48 if q_lora else None, rope_interleave=interleave, num_hidden_layers=1)
    layer = _layer(cfg)
    x = torch.randn(batch, prefill + steps, cfg.hidden_size)
    cache = LatentCache.for_config(cfg, batch, prefill + steps)
    outs = [layer(x[:, :prefill], cache, mode="absorbed")]
    outs += [layer(x[:, t:t + 1], cache) for t in range(prefill, prefill + steps)]
    torch.testing.assert_close(torch.cat(outs, 1), layer(x, mode="naive"), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_transformers_deepseek_v3_attention(name):
    cfg = CONFIGS[name]
    ours = _layer(cfg, seed=2)
    theirs, rotary = hf_attention(cfg)
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and not [m for m in missing if "inv_freq" not in m]
    x = torch.randn(2, 11, cfg.hidden_size)
    pos = torch.arange(11)[None].expand(2, -1)
    with torch.no_grad():
        ref, _ = theirs(x, position_embeddings=rotary(x, pos), attention_mask=causal_additive_mask(11))
        torch.testing.assert_close(ours(x, mode="naive"), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours(x, mode="absorbed"), ref, atol=1e-5, rtol=1e-4)


def test_parameter_names_and_row_layout_follow_transformers():
    layer = MultiHeadLatentAttention(NANO)
    names = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    n_h, d = NANO.num_attention_heads, NANO.hidden_size
    assert names == {
        "q_a_proj.weight": (NANO.q_lora_rank, d),
        "q_a_layernorm.weight": (NANO.q_lora_rank,),
        "q_b_proj.weight": (n_h * (NANO.qk_nope_head_dim + NANO.qk_rope_head_dim), NANO.q_lora_rank),
        "kv_a_proj_with_mqa.weight": (NANO.kv_lora_rank + NANO.qk_rope_head_dim, d),
        "kv_a_layernorm.weight": (NANO.kv_lora_rank,),
        "kv_b_proj.weight": (n_h * (NANO.qk_nope_head_dim + NANO.v_head_dim), NANO.kv_lora_rank),
        "o_proj.weight": (d, n_h * NANO.v_head_dim),
    }
    lite = MultiHeadLatentAttention(NANO.replace(q_lora_rank=None))
    assert "q_proj.weight" in dict(lite.named_parameters()) and not hasattr(lite, "q_a_proj")
    assert lite.kv_a_layernorm.eps == 1e-6


def test_the_rope_key_is_shared_by_all_heads():
    """Changing W_KR changes every head's scores by the same key: one k_R per token, not per head."""
    layer = _layer(NANO)
    x = torch.randn(1, 4, NANO.hidden_size)
    latent = layer.latent(x, torch.arange(4))
    assert latent.shape == (1, 4, NANO.kv_lora_rank + NANO.qk_rope_head_dim)


def test_yarn_softmax_scale_follows_deepseek():
    v3 = ModelConfig.from_preset("deepseek-v3")
    tiny_v3 = v3.replace(hidden_size=64, num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, num_hidden_layers=1,
                         n_routed_experts=0, first_k_dense_replace=0, vocab_size=16, intermediate_size=32)
    assert MultiHeadLatentAttention(tiny_v3).scale == pytest.approx(0.13523, abs=1e-5)
    assert MultiHeadLatentAttention(NANO).scale == pytest.approx((32 + 16) ** -0.5)


@pytest.mark.parametrize("dtype, name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_latent_cache_bytes_equal_theory(dtype, name):
    cache = LatentCache.for_config(NANO, batch_size=3, max_len=40, dtype=dtype)
    assert cache.nbytes == kvcache.cache_bytes(NANO, seq_len=40, batch_size=3, dtype=name)
    assert cache.bytes_per_token() == kvcache.bytes_per_token(NANO, name)
    v3 = ModelConfig.from_preset("deepseek-v3")
    big = LatentCache.for_config(v3, batch_size=1, max_len=2, dtype=torch.bfloat16)
    assert big.bytes_per_token() == 70_272


def test_latent_cache_holds_only_latent_and_rope_key():
    model = MiniDeepSeek(NANO).eval()
    cache = model.new_cache(2, 10)
    assert isinstance(cache, LatentCache)
    model(torch.randint(0, NANO.vocab_size, (2, 6)), cache)
    assert cache.length == 6
    assert cache.c_kv(0).shape == (2, 6, NANO.kv_lora_rank) and cache.k_rope(0).shape == (2, 6, NANO.qk_rope_head_dim)
    with pytest.raises(CacheFullError, match="LatentCache is full"):
        model(torch.zeros(2, 5, dtype=torch.long), cache)


def test_cached_and_uncached_generation_agree_with_mla():
    torch.manual_seed(3)
    model = MiniDeepSeek(NANO).eval()
    ids = torch.randint(0, NANO.vocab_size, (3, 5))
    assert torch.equal(generate(model, ids, 20, use_cache=True), generate(model, ids, 20, use_cache=False))


def test_bad_inputs_are_refused():
    layer = MultiHeadLatentAttention(NANO)
    with pytest.raises(ValueError, match="mode='fast' is invalid: use one of 'naive', 'absorbed', 'auto'"):
        layer(torch.randn(1, 2, NANO.hidden_size), mode="fast")
    with pytest.raises(ValueError, match="mode='fast'"):
        MultiHeadLatentAttention(NANO, mode="fast")
    with pytest.raises(ValueError, match="attn_type='mha'"):
        MiniDeepSeek(NANO.variant("mha")).set_attention_mode("naive")
    with pytest.raises(ValueError, match="attn_type='mla'"):
        MultiHeadLatentAttention(NANO.variant("mha"))
    with pytest.raises(ValueError, match="KVCache"):
        LatentCache.for_config(NANO.variant("mha"), 1)


def _record_paths(layer, monkeypatch):
    taken = []
    for name in ("attend_naive", "attend_absorbed"):
        original = getattr(layer, name)
        monkeypatch.setattr(layer, name, lambda *a, _f=original, _n=name, **k: taken.append(_n[7:]) or _f(*a, **k))
    return taken


def test_auto_mode_takes_naive_for_prefill_and_absorbed_for_decode(monkeypatch):
    layer = _layer(NANO)
    taken = _record_paths(layer, monkeypatch)
    cache = LatentCache.for_config(NANO, batch_size=1, max_len=8)
    x = torch.randn(1, 6, NANO.hidden_size)
    layer(x[:, :4], cache)
    layer(x[:, 4:5], cache)
    cache.truncate(4, range(1))
    layer(x[:, 4:6], cache)  # two tokens after a cached prefix: a speculative verify
    assert taken == ["naive", "absorbed", "absorbed"]
    layer(x[:, :1])  # one token without a cache
    assert taken[3:] == ["absorbed"]
    layer.mode = "naive"  # the layer's default ...
    layer(x[:, :1])
    layer(x[:, :1], mode="absorbed")  # ... and a per-call override
    assert taken[4:] == ["naive", "absorbed"]


def test_set_attention_mode_reaches_every_mla_layer_and_keeps_outputs(monkeypatch):
    torch.manual_seed(0)
    model = MiniDeepSeek(NANO).eval()
    ids = torch.randint(0, NANO.vocab_size, (2, 6))
    reference = generate(model, ids, 8)
    assert model.set_attention_mode("naive") is model
    layers = [m for m in model.modules() if isinstance(m, MultiHeadLatentAttention)]
    assert len(layers) == NANO.num_hidden_layers + NANO.num_nextn_predict_layers
    assert all(m.mode == "naive" for m in layers)
    taken = _record_paths(layers[0], monkeypatch)
    assert torch.equal(generate(model, ids, 8), reference)
    assert set(taken) == {"naive"}


def test_gradients_flow_through_both_paths_equally():
    layer = _layer(NANO)
    x = torch.randn(2, 5, NANO.hidden_size)
    grads = []
    for path in ("naive", "absorbed"):
        layer.zero_grad()
        layer(x, mode=path).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in layer.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-4, rtol=1e-4)
