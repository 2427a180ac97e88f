"""MLA decode: absorbed vs naive path, against MHA with a KV cache and transformers' DeepseekV3Attention.

    python bench/bench_mla.py            (or: make bench)

One attention layer with DeepSeek-V2-Lite's attention shapes (hidden 2048, 16
heads, d_nope 128, d_rope 64, d_v 128, kv_lora_rank 512, no query compression),
batch 1, fp32, CPU. For each context length S the timed operation is ONE
decode step: one new token attending over S cached positions. Peers, all with
identical weights where they share them:

- mlakit naive:    expands every cached latent through kv_b_proj at every step
- mlakit absorbed: attends over the 576-wide latents directly (weight absorption)
- transformers:    DeepseekV3Attention (eager), which caches latents and expands them each step
- MHA + KV cache:  mlakit's baseline attention with the same 16 heads of 128, caching expanded K/V

Read the ratio columns; absolute times depend on the machine. Each time is the
best of REPEATS steps.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from mlakit import ModelConfig, kvcache, seed_everything
from mlakit.attention import Attention, KVCache
from mlakit.mla import LatentCache, MultiHeadLatentAttention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
REPEATS = 7
CONTEXTS = (512, 2048, 8192)
CFG = ModelConfig.from_preset("deepseek-v2-lite").replace(num_hidden_layers=1, max_position_embeddings=max(CONTEXTS) + 1,
                                                        rope_scaling=None)


def best_of(step, repeats: int = REPEATS) -> float:
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def time_mlakit_mla(layer, ctx: int, path: str) -> float:
    cache = LatentCache.for_config(CFG, batch_size=1, max_len=ctx + 1)
    layer(torch.randn(1, ctx, CFG.hidden_size), cache)  # prefill ctx positions
    x = torch.randn(1, 1, CFG.hidden_size)

    def step():
        cache.truncate(ctx)  # rewind: every timed step decodes position ctx
        layer(x, cache, path=path)

    return best_of(step)


@torch.no_grad()
def time_mha(ctx: int) -> float:
    mha_cfg = CFG.variant("mha")
    layer = Attention(mha_cfg).eval()
    cache = KVCache.for_config(mha_cfg, batch_size=1, max_len=ctx + 1)
    layer(torch.randn(1, ctx, CFG.hidden_size), cache)
    x = torch.randn(1, 1, CFG.hidden_size)

    def step():
        cache.truncate(ctx)
        layer(x, cache)

    return best_of(step)


@torch.no_grad()
def time_transformers(layer, ctx: int) -> float | None:
    try:
        from hf_reference import hf_attention
        from transformers import DynamicCache
    except ImportError:
        return None
    hf, rotary = hf_attention(CFG)
    hf.load_state_dict(layer.state_dict(), strict=False)
    cache = DynamicCache(config=hf.config)
    prefill = torch.randn(1, ctx, CFG.hidden_size)
    pos = torch.arange(ctx)[None]
    mask = torch.full((ctx, ctx), float("-inf")).triu(1)[None, None]
    hf(prefill, position_embeddings=rotary(prefill, pos), attention_mask=mask, cache=cache)
    x = torch.randn(1, 1, CFG.hidden_size)
    emb = rotary(x, torch.tensor([[ctx]]))

    def step():
        hf(x, position_embeddings=emb, attention_mask=None, cache=cache)
        cache.crop(-1)  # rewind: drop the position just written

    return best_of(step)


def main() -> None:
    seed_everything(0)
    layer = MultiHeadLatentAttention(CFG).eval()
    mla_b = kvcache.bytes_per_token(CFG, "bf16")
    mha_b = kvcache.bytes_per_token(CFG, "bf16", attn_type="mha")
    print(f"Cache per token per layer (bf16): MLA {mla_b:,} bytes, MHA {mha_b:,} bytes ({mha_b / mla_b:.1f}x)")
    print(f"One decode step, batch 1, fp32, {torch.get_num_threads()} threads, best of {REPEATS} (ms):\n")
    head = f"{'context':>8}{'naive':>9}{'absorbed':>10}{'transformers':>14}{'MHA+cache':>11}" \
           f"{'naive/abs':>11}{'hf/abs':>8}{'mha/abs':>9}"
    print(head)
    for ctx in CONTEXTS:
        naive = time_mlakit_mla(layer, ctx, "naive")
        absorbed = time_mlakit_mla(layer, ctx, "absorbed")
        hf = time_transformers(layer, ctx)
        mha = time_mha(ctx)
        hf_s = f"{hf * 1e3:>14.2f}" if hf else f"{'n/a':>14}"
        hf_r = f"{hf / absorbed:>7.1f}x" if hf else f"{'n/a':>8}"
        print(f"{ctx:>8}{naive * 1e3:>9.2f}{absorbed * 1e3:>10.2f}{hf_s}{mha * 1e3:>11.2f}"
              f"{naive / absorbed:>10.1f}x{hf_r}{mha / absorbed:>8.1f}x")


if __name__ == "__main__":
    main()
