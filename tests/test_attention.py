import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlakit import ModelConfig, kvcache
from mlakit.attention import (
    Attention,
    CacheFullError,
    KVCache,
    causal_mask,
    scaled_dot_product_attention,
)
from mlakit.generate import generate
from mlakit.model import MiniDeepSeek

DENSE = ModelConfig.from_preset("nano", n_routed_experts=0, hidden_size=64, num_hidden_layers=2)


def _copy_expanding_kv(src: Attention, dst: Attention) -> None:
    """Load a GQA/MQA layer's weights into a layer with more KV heads by repeating each KV head."""
    rep = dst.n_kv_heads // src.n_kv_heads
    with torch.no_grad():
        dst.q_proj.weight.copy_(src.q_proj.weight)
        dst.o_proj.weight.copy_(src.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(src, name).weight.view(src.n_kv_heads, src.head_dim, -1)  # (n_kv, d_h, d)
            getattr(dst, name).weight.copy_(w.repeat_interleave(rep, dim=0).reshape(-1, w.shape[-1]))


def test_causal_mask_with_offset():
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert torch.equal(causal_mask(3, 3), torch.ones(3, 3, dtype=torch.bool).tril())


def test_attention_matches_a_reference_written_from_scratch():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 4)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, 8**-0.5), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [3, 1], ids=["per-head", "shared-folded"])
@pytest.mark.parametrize("T", [2, 3])
def test_a_few_queries_after_a_cached_prefix_are_masked_causally(kv_heads, T):
    """The in-place corner mask (queries after a prefix, as in a speculative verify) equals a full causal mask."""
    torch.manual_seed(0)
    S = 9
    q, k, v = torch.randn(2, 3, T, 8), torch.randn(2, kv_heads, S, 8), torch.randn(2, kv_heads, S, 4)
    allowed = causal_mask(T, S)  # query t sits at position S - T + t
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.expand(-1, 3, -1, -1), v.expand(-1, 3, -1, -1),
                                                           attn_mask=allowed, scale=0.3)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, 0.3), ref, atol=1e-6, rtol=1e-5)


def test_gqa_with_one_group_per_head_equals_mha():
    torch.manual_seed(0)
    mha = Attention(DENSE.variant("mha"))
    gqa = Attention(DENSE.variant("gqa", DENSE.num_attention_heads))
    gqa.load_state_dict(mha.state_dict())
    x = torch.randn(2, 7, DENSE.hidden_size)
    torch.testing.assert_close(gqa(x), mha(x))


@pytest.mark.parametrize("kind, groups", [("mqa", None), ("gqa", 2)])
def test_shared_kv_heads_equal_mha_with_repeated_kv_weights(kind, groups):
    torch.manual_seed(0)
    small = Attention(DENSE.variant(kind, groups))
    mha = Attention(DENSE.variant("mha"))
    _copy_expanding_kv(small, mha)
    x = torch.randn(2, 6, DENSE.hidden_size)
    torch.testing.assert_close(small(x), mha(x), atol=1e-6, rtol=1e-5)


def test_mqa_is_gqa_with_one_group():
    torch.manual_seed(0)
    mqa = Attention(DENSE.variant("mqa"))
    gqa = Attention(DENSE.variant("gqa", 1))
    gqa.load_state_dict(mqa.state_dict())
    x = torch.randn(1, 5, DENSE.hidden_size)
    torch.testing.assert_close(gqa(x), mqa(x))


@pytest.mark.parametrize("kind, groups", [("mha", None), ("gqa", 2), ("mqa", None)])
def test_cached_decoding_equals_full_forward(kind, groups):
    torch.manual_seed(0)
    cfg = DENSE.variant(kind, groups)
    model = MiniDeepSeek(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (3, 12))
    full = model(ids).logits
    cache = model.new_cache(3, 12)
    parts = [model(ids[:, :5], cache).logits] + [model(ids[:, t:t + 1], cache).logits for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.length == 12


@pytest.mark.parametrize("kind, groups", [("mha", None), ("gqa", 2), ("mqa", None)])
def test_cached_and_uncached_generation_give_the_same_tokens(kind, groups):
    torch.manual_seed(1)
    model = MiniDeepSeek(DENSE.variant(kind, groups)).eval()
    ids = torch.randint(0, DENSE.vocab_size, (2, 4))
    assert torch.equal(generate(model, ids, 16, use_cache=True), generate(model, ids, 16, use_cache=False))


def test_sampling_is_reproducible_with_a_generator():
    model = MiniDeepSeek(DENSE.variant("mha")).eval()
    ids = torch.zeros(1, 1, dtype=torch.long)
    a = generate(model, ids, 8, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = generate(model, ids, 8, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, ids, 1, temperature=-1.0)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["mha", "gqa", "mqa"]), batch=st.integers(1, 3), prefill=st.integers(1, 6),
       steps=st.integers(1, 5))
def test_cache_equivalence_for_any_length_and_batch(kind, batch, prefill, steps):
    torch.manual_seed(0)
    cfg = DENSE.variant(kind, 2 if kind == "gqa" else None).replace(num_hidden_layers=1)
    model = MiniDeepSeek(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, prefill + steps))
    cache = model.new_cache(batch, prefill + steps)
    out = [model(ids[:, :prefill], cache).logits] + [model(ids[:, t:t + 1], cache).logits
                                                   for t in range(prefill, prefill + steps)]
    torch.testing.assert_close(torch.cat(out, 1), model(ids).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind, groups", [("mha", None), ("gqa", 2), ("mqa", None)])
@pytest.mark.parametrize("dtype, name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_cache_nbytes_equals_theory(kind, groups, dtype, name):
    cfg = DENSE.variant(kind, groups)
    cache = KVCache.for_config(cfg, batch_size=3, max_len=50, dtype=dtype)
    assert cache.nbytes == kvcache.cache_bytes(cfg, seq_len=50, batch_size=3, dtype=name)
    assert cache.bytes_per_token() == kvcache.bytes_per_token(cfg, name)


def test_full_cache_raises_a_clear_error():
    cfg = DENSE.variant("mha")
    model = MiniDeepSeek(cfg).eval()
    cache = model.new_cache(1, 4)
    model(torch.zeros(1, 4, dtype=torch.long), cache)
    with pytest.raises(CacheFullError, match="holds 4 of 4 positions"):
        model(torch.zeros(1, 1, dtype=torch.long), cache)
    cache.reset()
    assert cache.length == 0


def test_attention_refuses_mla_configs():
    with pytest.raises(ValueError, match="mlakit.mla"):
        Attention(ModelConfig.from_preset("nano"))
    with pytest.raises(ValueError, match="latents"):
        KVCache.for_config(ModelConfig.from_preset("nano"), 1)
    with pytest.raises(ValueError, match="max_len"):
        KVCache(1, 1, 0, 1, 8)
