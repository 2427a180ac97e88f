"""Decode speed with and without the KV cache, for MHA / GQA / MQA, and our attention against torch's fused SDPA.

    python bench/kv_cache.py            (or: make bench)

Every number in a table comes from the same run on the same machine; the ratio
columns are what to read. Tokens per second are for greedy generation of
NEW tokens after a PROMPT-token prompt, batch BATCH, with the course's small
dense model (nano preset without experts). Each timing is the best of REPEATS.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from mlakit import ModelConfig, kvcache, seed_everything
from mlakit.attention import scaled_dot_product_attention
from mlakit.generate import generate
from mlakit.model import MiniDeepSeek

PROMPT, NEW, BATCH, REPEATS = 64, 128, 4, 3


def best_of(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_generation() -> None:
    base = ModelConfig.from_preset("nano", n_routed_experts=0, max_position_embeddings=PROMPT + NEW)
    print(f"Generation: {NEW} new tokens after {PROMPT}, batch {BATCH}, {torch.get_num_threads()} threads\n")
    print(f"{'attention':<10}{'cache KB/token':>15}{'no cache tok/s':>16}{'cache tok/s':>13}{'speed-up':>10}")
    for kind, groups in (("mha", None), ("gqa", 2), ("mqa", None)):
        cfg = base.variant(kind, groups)
        seed_everything(0)
        model = MiniDeepSeek(cfg).eval()
        prompt = torch.randint(0, cfg.vocab_size, (BATCH, PROMPT))
        t_plain = best_of(lambda m=model, p=prompt: generate(m, p, NEW, use_cache=False))
        t_cache = best_of(lambda m=model, p=prompt: generate(m, p, NEW, use_cache=True))
        kb = kvcache.bytes_per_token(cfg, "fp32") / 1024
        tok = BATCH * NEW
        print(f"{kind:<10}{kb:>15.1f}{tok / t_plain:>16.0f}{tok / t_cache:>13.0f}{t_plain / t_cache:>9.1f}x")


def bench_attention_kernel() -> None:
    print("\nOne decode step of attention (1 query over S cached keys), 8 heads of 64, batch 8:\n")
    print(f"{'S':>8}{'mlakit (ms)':>13}{'torch SDPA (ms)':>17}{'mlakit / SDPA':>15}")
    for s in (256, 1024, 4096):
        q = torch.randn(8, 8, 1, 64)
        k, v = torch.randn(8, 8, s, 64), torch.randn(8, 8, s, 64)
        ours = best_of(lambda q=q, k=k, v=v: scaled_dot_product_attention(q, k, v, 64**-0.5, causal=True), 20)
        fused = best_of(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=False), 20)
        print(f"{s:>8}{ours * 1e3:>13.3f}{fused * 1e3:>17.3f}{ours / fused:>14.2f}x")


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    bench_generation()
    bench_attention_kernel()
