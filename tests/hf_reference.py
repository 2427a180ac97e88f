"""Build transformers' DeepseekV3 modules from an mlakit config, for parity tests."""

from __future__ import annotations

import torch

from mlakit import ModelConfig


def hf_config(cfg: ModelConfig, **extra):
    from transformers import DeepseekV3Config

    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        rs = dict(cfg.rope_scaling)
        rs["rope_type"] = rs.pop("type", rs.get("rope_type"))
        rope = {**rs, "rope_theta": cfg.rope_theta}
    hf = DeepseekV3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        moe_intermediate_size=cfg.moe_intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_attention_heads,
        n_shared_experts=cfg.n_shared_experts, n_routed_experts=cfg.n_routed_experts,
        routed_scaling_factor=cfg.routed_scaling_factor, kv_lora_rank=cfg.kv_lora_rank, q_lora_rank=cfg.q_lora_rank,
        qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim, qk_nope_head_dim=cfg.qk_nope_head_dim,
        n_group=cfg.n_group, topk_group=cfg.topk_group, num_experts_per_tok=cfg.num_experts_per_tok,
        first_k_dense_replace=cfg.first_k_dense_replace, norm_topk_prob=cfg.norm_topk_prob,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=rope, rope_interleave=cfg.rope_interleave, attention_bias=False,
        tie_word_embeddings=cfg.tie_word_embeddings, **extra,
    )
    hf._attn_implementation = "eager"
    return hf


def hf_attention(cfg: ModelConfig):
    """(DeepseekV3Attention, DeepseekV3RotaryEmbedding) for cfg, float32, eval mode."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
        DeepseekV3Attention,
        DeepseekV3RotaryEmbedding,
    )

    hf = hf_config(cfg)
    return DeepseekV3Attention(hf, layer_idx=0).eval(), DeepseekV3RotaryEmbedding(hf)


def causal_additive_mask(T: int, S: int | None = None) -> torch.Tensor:
    """(1, 1, T, S) float mask: 0 where allowed, -inf above the diagonal."""
    S = S or T
    allowed = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    return torch.zeros(T, S).masked_fill(~allowed, float("-inf"))[None, None]
