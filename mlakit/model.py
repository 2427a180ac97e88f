"""MiniDeepSeek: the course's decoder-only language model, DeepSeek-V3's architecture at any size.

- Pre-norm blocks (RMSNorm -> attention -> residual, RMSNorm -> FFN -> residual),
  a final RMSNorm and an untied LM head, as in DeepSeek-V2/V3.
- Attention is multi-head latent attention (``attn_type="mla"``, latent cache,
  absorbed decode) or a baseline (MHA / GQA / MQA, KV cache), so one model can be
  compared across attention designs.
- The first ``first_k_dense_replace`` layers use a dense SwiGLU FFN, the rest
  DeepSeekMoE (``mlakit.moe``); a config with ``n_routed_experts=0`` is dense.
- Multi-token prediction (V3 §2.2): ``num_nextn_predict_layers`` modules, module
  k combining the previous depth's hidden state h_i with the embedding of token
  t_{i+k}: h' = M [RMSNorm(Emb(t_{i+k})) ; RMSNorm(h_i)] (embedding first, as
  in the released weights), then one transformer block; the shared LM head
  predicts t_{i+k+1}. Names follow the released checkpoint: ``enorm``,
  ``hnorm``, ``eh_proj``, the block, and ``shared_head_norm``. Embedding and head
  are shared with the main model. At inference the modules are dropped or used
  for speculative decoding (:mod:`mlakit.generate`).

``model(ids)`` returns logits. ``model(ids, targets=..., loss_mask=...)``
returns an :class:`LMOutput` with the loss split into its parts: ``main``
(next-token cross-entropy), ``mtp`` (lambda/D times the sum of the MTP
cross-entropies) and ``balance`` (V3's sequence-wise balance loss, alpha
times its sum over the MoE layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, KVCache
from .config import ModelConfig
from .layers import RMSNorm, SwiGLU
from .mla import LatentCache, MultiHeadLatentAttention, check_mode
from .moe import DeepSeekMoE, iter_moe_layers

Cache = KVCache | LatentCache


class Block(nn.Module):
    """One pre-norm transformer block: attention, then a dense FFN or DeepSeekMoE."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        attention = MultiHeadLatentAttention if config.attn_type == "mla" else Attention
        self.self_attn = attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.n_routed_experts > 0 and layer_idx >= config.first_k_dense_replace:
            self.mlp = DeepSeekMoE(config)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache, key_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class MTPModule(nn.Module):
    """One multi-token-prediction depth: h' = block(eh_proj([enorm(emb) ; hnorm(h)])), plus the head's norm."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        d = config.hidden_size
        self.enorm = RMSNorm(d, config.rms_norm_eps)
        self.hnorm = RMSNorm(d, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)  # M: (2d -> d), embedding half first
        self.block = Block(config, layer_idx)
        self.shared_head_norm = RMSNorm(d, config.rms_norm_eps)

    def forward(self, h_prev: torch.Tensor, emb_next: torch.Tensor, cache: Cache | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """h_prev (B, T, d) at positions i and Emb(t_{i+k}) (B, T, d) -> h (B, T, d) at depth k."""
        h = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h_prev)], dim=-1))  # (B, T, d)
        return self.block(h, cache, key_mask)


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, T, vocab) next-token logits of the main model
    loss: torch.Tensor  # main + mtp + balance
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # the parts, each a scalar tensor
    mtp_logits: list[torch.Tensor] = field(default_factory=list)  # depth k: (B, T - k, vocab), predicting t_{i+k+1}


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean cross-entropy over the positions where mask is 1 (all positions when mask is None)."""
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none")
    if mask is None:
        return loss.mean()
    mask = mask.reshape(-1).float()
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


class MiniDeepSeek(nn.Module):
    """Embedding -> blocks -> RMSNorm -> LM head, with optional MTP modules. See the module docstring."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        L = config.num_hidden_layers
        self.mtp = nn.ModuleList(MTPModule(config, L + k) for k in range(config.num_nextn_predict_layers))

    # ------------------------------------------------------------------ caches
    def new_cache(self, batch_size: int, max_len: int | None = None, include_mtp: bool = False) -> Cache:
        """An empty cache (latent for MLA, KV otherwise) in the weights' dtype and device; with
        ``include_mtp`` it also has room for the MTP blocks (speculative decoding)."""
        w = self.embed_tokens.weight
        config = self.config
        if include_mtp:
            config = config.replace(num_hidden_layers=config.num_hidden_layers + len(self.mtp), first_k_dense_replace=0)
        kind = LatentCache if config.attn_type == "mla" else KVCache
        return kind.for_config(config, batch_size, max_len, dtype=w.dtype, device=w.device)

    # ----------------------------------------------------------------- forward
    def hidden_states(self, input_ids: torch.Tensor, cache: Cache | None = None,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's output (B, T, d), before the final norm (what the MTP modules take)."""
        key_mask = attention_mask.bool() if attention_mask is not None else None
        x = self.embed_tokens(input_ids)  # (B, T, d)
        for layer in self.layers:
            x = layer(x, cache, key_mask)
        return x

    def forward(self, input_ids: torch.Tensor, cache: Cache | None = None, attention_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None):
        """Logits (B, T, vocab) for input_ids (B, T); with ``targets`` an :class:`LMOutput`.

        ``attention_mask`` (B, S), 1 for real tokens and 0 for padding, covers the
        cached positions and the new ones (S = cached + T); left-padded batches
        use it so no token attends to padding. ``targets`` (B, T) are the next
        tokens (targets[:, i] = t_{i+1}); ``loss_mask`` (B, T) selects the positions
        that count (e.g. not the prompt, not padding).
        """
        h = self.hidden_states(input_ids, cache, attention_mask)
        logits = self.lm_head(self.norm(h))  # (B, T, vocab)
        if targets is None:
            return logits
        losses = {"main": masked_cross_entropy(logits, targets, loss_mask)}
        mtp_logits = []
        if len(self.mtp) and input_ids.shape[1] > len(self.mtp):
            depth_losses = []
            for k, module in enumerate(self.mtp, start=1):
                h = module(h[:, :-1], self.embed_tokens(input_ids[:, k:]))  # (B, T - k, d): position i sees t_{i+k}
                logits_k = self.lm_head(module.shared_head_norm(h))  # predicts t_{i+k+1} = targets[:, i + k]
                mask_k = loss_mask[:, k:] if loss_mask is not None else None
                depth_losses.append(masked_cross_entropy(logits_k, targets[:, k:], mask_k))
                mtp_logits.append(logits_k)
            losses["mtp"] = self.config.mtp_loss_weight * torch.stack(depth_losses).mean()
        if self.config.aux_loss_alpha > 0 and any(True for _ in iter_moe_layers(self)):
            losses["balance"] = sum(m.balance_loss(self.config.aux_loss_alpha) for m in iter_moe_layers(self))
        return LMOutput(logits, sum(losses.values()), losses, mtp_logits)

    # ------------------------------------------------------------- counting
    def num_parameters(self, active: bool = False, include_mtp: bool = False) -> int:
        """Parameters of the model; with ``active`` those one token uses: the shared experts and k of
        the E routed experts of each MoE layer, everything else in full (embedding and head included).
        The MTP modules are left out unless ``include_mtp``. Works on the meta device."""
        skip = {id(p) for p in self.mtp.parameters()} if not include_mtp else set()
        seen, total, inactive = set(), 0, 0.0
        for p in self.parameters():
            if id(p) in skip or id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
        if not active:
            return total
        for m in iter_moe_layers(self):
            if not include_mtp and any(m is mm for mm in iter_moe_layers(self.mtp)):
                continue
            routed = sum(p.numel() for p in m.experts.parameters())
            k, E = self.config.num_experts_per_tok, self.config.n_routed_experts
            inactive += routed * (E - k) / E
        return round(total - inactive)

    # ------------------------------------------------------------ attention
    def set_attention_mode(self, mode: str) -> MiniDeepSeek:
        """Set every MLA layer (MTP blocks included) to ``mode``: "naive", "absorbed" or "auto"
        (the default: naive for a prefill, absorbed for a one-token decode step). Returns the model."""
        check_mode(mode)
        if self.config.attn_type != "mla":
            raise ValueError(f"set_attention_mode applies to MLA; this model has attn_type={self.config.attn_type!r}")
        for m in self.modules():
            if isinstance(m, MultiHeadLatentAttention):
                m.mode = mode
        return self
