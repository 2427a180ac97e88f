"""The course's decoder-only language model, assembled from the library's parts.

Pre-norm blocks (RMSNorm -> attention -> residual, RMSNorm -> FFN -> residual),
a final RMSNorm and an untied LM head, as in DeepSeek-V2/V3. Attention is
DeepSeek's multi-head latent attention (``attn_type="mla"``, with its latent
cache) or one of the baselines (MHA / GQA / MQA, with a KV cache), so the same
model can be compared across attention designs. The FFNs are dense SwiGLU; the
DeepSeekMoE layers and multi-token prediction plug into the same blocks as the
course builds them, and a config that asks for a part not yet built is refused
with a message that says which.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, KVCache
from .config import ModelConfig
from .layers import RMSNorm, SwiGLU
from .mla import LatentCache, MultiHeadLatentAttention

Cache = KVCache | LatentCache


class Block(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        attention = MultiHeadLatentAttention if config.attn_type == "mla" else Attention
        self.self_attn = attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache, key_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class MiniDeepSeek(nn.Module):
    """Embedding -> blocks -> RMSNorm -> LM head. ``forward(ids, cache)`` returns logits (B, T, vocab)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.is_moe:
            raise NotImplementedError("MiniDeepSeek with MoE layers arrives with mlakit.moe; "
                                      "set n_routed_experts=0 for a dense model for now")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def new_cache(self, batch_size: int, max_len: int | None = None) -> Cache:
        """An empty cache sized for this model (latent for MLA, KV otherwise), in the weights' dtype and device."""
        w = self.embed_tokens.weight
        kind = LatentCache if self.config.attn_type == "mla" else KVCache
        return kind.for_config(self.config, batch_size, max_len, dtype=w.dtype, device=w.device)

    def forward(self, input_ids: torch.Tensor, cache: Cache | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for input_ids (B, T).

        ``attention_mask`` (B, S), 1 for real tokens and 0 for padding, covers the
        cached positions and the new ones (S = cached + T); left-padded batches
        use it so no token attends to padding.
        """
        key_mask = attention_mask.bool() if attention_mask is not None else None
        x = self.embed_tokens(input_ids)  # (B, T, d)
        for layer in self.layers:
            x = layer(x, cache, key_mask)
        return self.lm_head(self.norm(x))  # (B, T, vocab)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
