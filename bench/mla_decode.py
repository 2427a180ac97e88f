"""MLA decode step: absorbed vs naive, against MHA with a full KV cache and transformers' DeepseekV3Attention.

    python bench/mla_decode.py                      (or: make bench)
    python bench/mla_decode.py --contexts 512 4096 --batches 1 --rounds 9

Config: one attention layer with DeepSeek-V2-Lite's attention shapes (hidden
2048, 16 heads, d_nope 128, d_rope 64, d_v 128, kv_lora_rank 512, no query
compression, no YaRN), batch 1 and 8, contexts 512 to 8192; fp32 on the CPU,
bf16 and fp32 on a GPU when one is present. The timed operation is ONE decode
step: one new token per sequence attending over ``context`` cached positions
(the cache is rewound after every step, so every step decodes the same
position). Peers:

- MHA + KV cache:  mlakit's baseline attention with the same 16 heads of 128,
                   caching full per-head keys and values (what MLA replaces);
- mlakit naive:    MultiHeadLatentAttention(mode="naive"): expands every cached
                   latent through kv_b_proj at every step;
- mlakit absorbed: mode="absorbed": attends over the 576-wide latents directly;
- transformers:    DeepseekV3Attention (eager) with identical weights and the
                   same cached latents; it caches latents and expands them each step.

Before timing, the decode outputs of naive, absorbed and transformers are
compared (the MHA layer is a different architecture and is only timed). Each
time is the best over rounds in which all peers take turns; every ratio in the
table comes from this one run. Target (issue): absorbed at least 10x faster
than naive and than transformers at context 4096 on 2 CPU cores.
"""

from __future__ import annotations

import argparse

import torch
from benchutil import device_and_dtypes, interleaved_best, machine, transformers_config

from mlakit import ModelConfig, kvcache, seed_everything
from mlakit.attention import Attention, KVCache
from mlakit.kvcache import format_table
from mlakit.mla import LatentCache, MultiHeadLatentAttention

CONTEXTS, BATCHES, ROUNDS, TARGET_CONTEXT, TARGET = (512, 1024, 2048, 4096, 8192), (1, 8), 7, 4096, 10.0
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def make_config(max_context: int) -> ModelConfig:
    return ModelConfig.from_preset("deepseek-v2-lite").replace(
        num_hidden_layers=1, max_position_embeddings=max_context + 1, rope_scaling=None,
        scoring_func="sigmoid")  # the router is not used here; transformers only knows sigmoid gates


class Peers:
    """The four layers (MLA weights shared with transformers) on one device and dtype."""

    def __init__(self, cfg: ModelConfig, device: str, dtype: torch.dtype):
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
            DeepseekV3Attention,
            DeepseekV3RotaryEmbedding,
        )

        seed_everything(0)
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.mla = MultiHeadLatentAttention(cfg).to(device, dtype).eval()
        self.mha_cfg = cfg.variant("mha")
        self.mha = Attention(self.mha_cfg).to(device, dtype).eval()
        hf_cfg = transformers_config(cfg)
        self.hf = DeepseekV3Attention(hf_cfg, layer_idx=0).to(device, dtype).eval()
        self.hf.load_state_dict(self.mla.state_dict())  # same names, same row layout
        self.rotary = DeepseekV3RotaryEmbedding(hf_cfg).to(device)
        self.hf_cfg = hf_cfg

    def hf_latent(self, h: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What DeepseekV3Attention caches for h, computed as its forward does: (B, 1, T, d_c), (B, 1, T, d_rope).

        With interleaved RoPE transformers stores k_R with its pairs regrouped (and
        permutes q_R alike), so its cache rows are its own, not a copy of ours."""
        from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m

        B, T, _ = h.shape
        kv_nope, k_rot = self.hf.kv_a_proj_with_mqa(h).split([self.cfg.kv_lora_rank, self.cfg.qk_rope_head_dim], -1)
        kv_nope = self.hf.kv_a_layernorm(kv_nope).view(B, 1, T, -1)
        k_rot = k_rot.view(B, 1, T, -1)
        rope = m.apply_rotary_pos_emb_interleave if self.cfg.rope_interleave else m.apply_rotary_pos_emb
        _, k_rot = rope(k_rot, k_rot, *self.rotary(h, position_ids))
        return kv_nope, k_rot

    @torch.no_grad()
    def steps(self, batch: int, context: int):
        """Decode-step closures over caches holding ``context`` positions, and the new token's input."""
        from transformers import DynamicCache

        cfg, dev, dt = self.cfg, self.device, self.dtype
        latent_cache = LatentCache.for_config(cfg, batch, context + 1, dtype=dt, device=dev)
        hf_cache = DynamicCache(config=self.hf_cfg)
        for start in range(0, context, 1024):  # the rows each layer itself writes when it prefills h
            end = min(context, start + 1024)
            h = torch.randn(batch, end - start, cfg.hidden_size, device=dev, dtype=dt)
            positions = torch.arange(start, end, device=dev)
            latent_cache.append(0, self.mla.latent(h, positions))
            hf_cache.update(*self.hf_latent(h, positions[None].expand(batch, -1)), 0)
        kv = KVCache.for_config(self.mha_cfg, batch, context + 1, dtype=dt, device=dev)
        shape = (batch, self.mha_cfg.num_key_value_heads, context, self.mha_cfg.head_dim)
        kv.append(0, torch.randn(shape, device=dev, dtype=dt), torch.randn(shape, device=dev, dtype=dt))

        x = torch.randn(batch, 1, cfg.hidden_size, device=dev, dtype=dt)
        emb = self.rotary(x, torch.full((batch, 1), context, device=dev))

        def mla(mode):
            def step():
                latent_cache.truncate(context)  # rewind: every step decodes position `context`
                return self.mla(x, latent_cache, mode=mode)
            return step

        def hf():
            out = self.hf(x, position_embeddings=emb, attention_mask=None, cache=hf_cache)[0]
            hf_cache.crop(-1)  # rewind: drop the position just written
            return out

        def mha():
            kv.truncate(context)
            return self.mha(x, kv)

        return {"MHA+cache": mha, "naive": mla("naive"), "absorbed": mla("absorbed"), "transformers": hf}


@torch.no_grad()
def check_outputs(steps, dtype) -> float:
    """Largest difference between the three MLA implementations' decode outputs; raises when past tolerance."""
    ref = steps["absorbed"]().float()
    worst = 0.0
    for name in ("naive", "transformers"):
        out = steps[name]().float()
        torch.testing.assert_close(out, ref, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype],
                                   msg=lambda m, n=name: f"{n} and absorbed disagree: {m}")
        worst = max(worst, (out - ref).abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=CONTEXTS)
    parser.add_argument("--batches", type=int, nargs="+", default=BATCHES)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds; the best of each peer is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = make_config(max(args.contexts))
    mla_b, mha_b = kvcache.bytes_per_token(cfg, "bf16"), kvcache.bytes_per_token(cfg, "bf16", attn_type="mha")
    print(f"Cache per token per layer (bf16): MLA {mla_b:,} bytes, MHA {mha_b:,} bytes ({mha_b / mla_b:.1f}x)")
    for device, dtype in device_and_dtypes():
        peers = Peers(cfg, device, dtype)
        print(f"\nOne decode step, {str(dtype).removeprefix('torch.')}, {machine(device)}, best of up to {args.rounds} "
              "rounds (ms); ratios are times over absorbed's")
        rows, verdicts = [], []
        for batch in args.batches:
            for context in args.contexts:
                steps = peers.steps(batch, context)
                diff = check_outputs(steps, dtype)
                t = interleaved_best(steps, args.rounds, device)
                a = t["absorbed"]
                rows.append({"batch": batch, "context": context, **{f"{k} ms": v * 1e3 for k, v in t.items()},
                             "naive/abs": f"{t['naive'] / a:.1f}x", "transformers/abs": f"{t['transformers'] / a:.1f}x",
                             "MHA/abs": f"{t['MHA+cache'] / a:.1f}x", "max |diff|": f"{diff:.1e}"})
                if context == TARGET_CONTEXT:
                    verdicts.append((batch, t["naive"] / a, t["transformers"] / a))
                del steps
        print(format_table(rows))
        for batch, vs_naive, vs_hf in verdicts:
            met = vs_naive >= TARGET and vs_hf >= TARGET
            print(f"target at context {TARGET_CONTEXT}, batch {batch}: absorbed {vs_naive:.1f}x faster than naive, "
                  f"{vs_hf:.1f}x than transformers (target {TARGET:.0f}x): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
