import pytest
import torch

import mlakit.attention
import mlakit.mla
from mlakit import ModelConfig, kvcache
from mlakit.attention import scaled_dot_product_attention
from mlakit.cache import CacheFullError, KVCache, LatentCache, PreallocatedCache
from mlakit.kernels import mla_decode
from mlakit.model import MiniDeepSeek

NANO = ModelConfig.from_preset("nano", n_routed_experts=0, num_hidden_layers=2)
GQA = NANO.variant("gqa", 2)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_old_import_paths_name_the_same_classes():
    assert mlakit.attention.KVCache is KVCache and mlakit.mla.LatentCache is LatentCache
    assert mlakit.attention.PreallocatedCache is PreallocatedCache and mlakit.attention.CacheFullError is CacheFullError
    assert issubclass(KVCache, PreallocatedCache) and issubclass(LatentCache, PreallocatedCache)


def test_write_then_read_returns_the_filled_positions():
    cache = LatentCache(num_layers=2, batch_size=3, max_len=10, kv_lora_rank=4, qk_rope_head_dim=2)
    a, b = torch.randn(3, 4, 6), torch.randn(3, 2, 6)
    cache.write(0, a)
    assert cache.lengths == [4, 0] and cache.read(0).shape == (3, 4, 6) and cache.read(1).shape == (3, 0, 6)
    cache.write(0, b)
    torch.testing.assert_close(cache.read(0), torch.cat([a, b], dim=1), rtol=0, atol=0)
    assert cache.read(0).data_ptr() == cache.latent.data_ptr()  # a view, not a copy
    assert torch.equal(cache.c_kv(0), cache.read(0)[..., :4]) and torch.equal(cache.k_rope(0), cache.read(0)[..., 4:])


def test_append_is_write_then_read_for_both_caches():
    kv = KVCache(num_layers=1, batch_size=2, max_len=8, num_kv_heads=2, head_dim=4)
    k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    got_k, got_v = kv.append(0, k, v)
    assert torch.equal(got_k, k) and torch.equal(got_v, v)
    read_k, read_v = kv.read(0)
    assert torch.equal(read_k, k) and torch.equal(read_v, v) and kv.length == 5


def test_storage_and_row_lengths_are_what_a_kernel_reads():
    cache = LatentCache(num_layers=2, batch_size=3, max_len=10, kv_lora_rank=4, qk_rope_head_dim=2)
    cache.write(1, torch.randn(3, 7, 6))
    storage = cache.storage(1)
    assert storage.shape == (3, 10, 6)  # (B, max_len, d_c + d_rope): filled or not
    assert torch.equal(storage[:, :7], cache.read(1))
    lengths = cache.row_lengths(1)
    assert lengths.dtype == torch.int32 and lengths.tolist() == [7, 7, 7] and lengths.device == cache.device
    storage[0, 0] = 42.0  # a view: the kernel reads what the cache holds
    assert float(cache.read(1)[0, 0, 0]) == 42.0
    k, v = KVCache(1, 2, 6, 1, 4).storage(0)
    assert k.shape == v.shape == (2, 1, 6, 4)


def test_the_mla_decode_kernel_reads_storage_and_row_lengths_like_attention_on_the_read_view():
    torch.manual_seed(0)
    cache = LatentCache(num_layers=1, batch_size=2, max_len=16, kv_lora_rank=8, qk_rope_head_dim=4)
    cache.write(0, torch.randn(2, 11, 12))
    cache.storage(0)[:, 11:] = float("nan")  # unfilled rows: a kernel must not read past the lengths
    q = torch.randn(2, 3, 12)  # (B, n_h, d_c + d_rope): one absorbed decode query per head
    latent = cache.read(0)  # (B, S, d_c + d_rope)
    ref = scaled_dot_product_attention(q[:, :, None], latent[:, None], latent[:, None, :, :8], 0.3)  # (B, n_h, 1, d_c)
    got = mla_decode(q, cache.storage(0), cache.row_lengths(0), 0.3, cache.kv_lora_rank, backend="torch")
    torch.testing.assert_close(got, ref[:, :, 0], atol=1e-6, rtol=1e-5)


def test_truncate_forgets_positions_and_the_next_write_overwrites_them():
    cache = KVCache(num_layers=2, batch_size=1, max_len=6, num_kv_heads=1, head_dim=2)
    for layer in range(2):
        cache.write(layer, torch.ones(1, 1, 4, 2), torch.ones(1, 1, 4, 2))
    cache.truncate(3, range(1))  # only layer 0
    assert cache.lengths == [3, 4]
    cache.write(0, torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    assert cache.read(0)[0][0, 0, :, 0].tolist() == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="cannot truncate layer 0 holding 4 positions to 5"):
        cache.truncate(5)
    cache.reset()
    assert cache.lengths == [0, 0]


def test_a_write_past_the_end_raises_and_changes_nothing():
    cache = LatentCache(num_layers=1, batch_size=1, max_len=4, kv_lora_rank=2, qk_rope_head_dim=2)
    cache.write(0, torch.randn(1, 3, 4))
    with pytest.raises(CacheFullError, match="holds 3 of 4 positions and 2 more were written"):
        cache.write(0, torch.randn(1, 2, 4))
    assert cache.lengths == [3]


@pytest.mark.parametrize("cfg", [NANO, GQA], ids=["latent", "kv"])
def test_expand_repeats_every_row_prompt_major(cfg):
    torch.manual_seed(0)
    model = MiniDeepSeek(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 5))
    cache = model.new_cache(2, 9)
    with torch.no_grad():
        model(ids, cache)
    big = cache.expand(3)
    assert type(big) is type(cache) and big.batch_size == 6 and big.max_len == 9 and big.lengths == cache.lengths
    assert cache.batch_size == 2  # the original is left as it was
    for name in cache._names:
        small_buf, big_buf = getattr(cache, name), getattr(big, name)
        assert big_buf.data_ptr() != small_buf.data_ptr()
        assert torch.equal(big_buf, small_buf.repeat_interleave(3, dim=1))  # row i * 3 + j is row i
    # decoding on the expanded cache continues every copy of its prompt
    nxt = torch.randint(0, cfg.vocab_size, (6, 1))
    reference = model.new_cache(6, 9)
    with torch.no_grad():
        model(ids.repeat_interleave(3, dim=0), reference)
        got, want = model(nxt, big).logits, model(nxt, reference).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_expand_refuses_a_bad_group_size():
    with pytest.raises(ValueError, match="group_size=0"):
        KVCache(1, 1, 4, 1, 2).expand(0)


@pytest.mark.parametrize("cfg", [NANO, GQA, NANO.variant("mha")], ids=["mla", "gqa", "mha"])
@pytest.mark.parametrize("dtype, name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_nbytes_is_exactly_the_formula_before_and_after_expand(cfg, dtype, name):
    kind = LatentCache if cfg.attn_type == "mla" else KVCache
    cache = kind.for_config(cfg, batch_size=2, max_len=30, dtype=dtype)
    assert cache.nbytes == kvcache.cache_bytes(cfg, seq_len=30, batch_size=2, dtype=name)
    assert cache.expand(4).nbytes == kvcache.cache_bytes(cfg, seq_len=30, batch_size=8, dtype=name)
    assert cache.bytes_per_token() == kvcache.bytes_per_token(cfg, name)


def test_caches_follow_the_requested_device_and_dtype():
    cache = LatentCache(2, 3, 8, 4, 2, dtype=torch.bfloat16, device="meta")
    assert cache.device.type == "meta" and cache.dtype == torch.bfloat16
    assert cache.row_lengths(0).device.type == "meta"
    big = cache.expand(2)
    assert big.device.type == "meta" and big.dtype == torch.bfloat16 and big.batch_size == 6
    model = MiniDeepSeek(NANO).to(torch.bfloat16)
    mine = model.new_cache(2, 8)
    assert mine.dtype == torch.bfloat16 and mine.device == model.embed_tokens.weight.device
    assert "LatentCache(latent=(2, 2, 8, 48)" in repr(mine)
