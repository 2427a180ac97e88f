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

``model(ids)`` always returns one :class:`ModelOutput`: ``.logits``, and on
request the final hidden states, the MTP logits and the routing decisions of
every MoE layer, returned with the output rather than kept on the layers (a
rollout or a reference-model forward in between cannot overwrite them). The
model computes no loss: :mod:`mlakit.losses` holds them as functions
(``lm_loss``, ``mtp_loss``, ``balance_loss``, ``token_logprobs``) and each
training recipe composes them (:func:`mlakit.losses.pretrain_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .attention import Attention, KVCache
from .config import ModelConfig
from .layers import RMSNorm, SwiGLU
from .mla import LatentCache, MultiHeadLatentAttention, check_mode
from .moe import DeepSeekMoE, RouterOutput
from .params import count_parameters

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

    def forward(self, x: torch.Tensor, cache: Cache | None = None, key_mask: torch.Tensor | None = None,
                return_routing: bool = False):
        """x (B, T, d) -> (B, T, d); with ``return_routing`` the pair (output, RouterOutput or None for a dense FFN)."""
        x = x + self.self_attn(self.input_layernorm(x), cache, key_mask)
        h = self.post_attention_layernorm(x)
        routing = None
        if isinstance(self.mlp, DeepSeekMoE):
            y, routing = self.mlp(h, return_routing=True)
        else:
            y = self.mlp(h)
        return (x + y, routing) if return_routing else x + y


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
                key_mask: torch.Tensor | None = None, return_routing: bool = False):
        """h_prev (B, T, d) at positions i and Emb(t_{i+k}) (B, T, d) -> h (B, T, d) at depth k
        (with ``return_routing``, the pair (h, RouterOutput or None))."""
        h = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h_prev)], dim=-1))  # (B, T, d)
        return self.block(h, cache, key_mask, return_routing)


@dataclass
class ModelOutput:
    """What one forward of :class:`MiniDeepSeek` computed; the fields after ``logits`` only on request."""

    logits: torch.Tensor  # (B, T, vocab) next-token logits of the main model
    hidden_states: torch.Tensor | None = None  # (B, T, d) the last block's output, before the final norm
    mtp_logits: list[torch.Tensor] = field(default_factory=list)  # depth k: (B, T - k, vocab), predicting t_{i+k+1}
    routing: list[RouterOutput] = field(default_factory=list)  # one per MoE layer that ran, main blocks then MTP


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
    def _trunk(self, input_ids: torch.Tensor, cache: Cache | None, attention_mask: torch.Tensor | None,
               routing: list | None = None) -> torch.Tensor:
        """Embedding and blocks: (B, T, d) before the final norm; appends each MoE layer's routing to ``routing``."""
        key_mask = attention_mask.bool() if attention_mask is not None else None
        x = self.embed_tokens(input_ids)  # (B, T, d)
        for layer in self.layers:
            x, r = layer(x, cache, key_mask, return_routing=True)
            if routing is not None and r is not None:
                routing.append(r)
        return x

    def hidden_states(self, input_ids: torch.Tensor, cache: Cache | None = None,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's output (B, T, d), before the final norm (what the MTP modules take)."""
        return self._trunk(input_ids, cache, attention_mask)

    def forward(self, input_ids: torch.Tensor, cache: Cache | None = None, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_mtp: bool = False,
                output_routing: bool = False) -> ModelOutput:
        """A :class:`ModelOutput` for input_ids (B, T): logits (B, T, vocab), and what is asked for.

        ``attention_mask`` (B, S), 1 for real tokens and 0 for padding, covers the
        cached positions and the new ones (S = cached + T); left-padded batches
        use it so no token attends to padding. ``output_mtp`` runs the MTP
        modules (teacher-forced: depth k at position i sees t_{i+k}; needs T > depth);
        ``output_routing`` returns the router's decisions of every MoE layer.
        """
        routing: list[RouterOutput] | None = [] if output_routing else None
        h = self._trunk(input_ids, cache, attention_mask, routing)
        logits = self.lm_head(self.norm(h))  # (B, T, vocab)
        out = ModelOutput(logits, h if output_hidden_states else None, routing=routing or [])
        if output_mtp and len(self.mtp) and input_ids.shape[1] > len(self.mtp):
            h_k = h
            for k, module in enumerate(self.mtp, start=1):
                h_k, r = module(h_k[:, :-1], self.embed_tokens(input_ids[:, k:]), return_routing=True)  # (B, T - k, d)
                out.mtp_logits.append(self.lm_head(module.shared_head_norm(h_k)))  # predicts t_{i+k+1}
                if routing is not None and r is not None:
                    out.routing.append(r)
        return out

    # ------------------------------------------------------------- counting
    def num_parameters(self, active: bool = False, include_mtp: bool = False) -> int:
        """Parameters of the model; with ``active`` those one token uses: the shared experts and k of
        the E routed experts of each MoE layer, everything else in full (embedding and head included).
        The MTP modules are left out unless ``include_mtp``; the balancing bias is a buffer, not a
        parameter. Counted from the config by :func:`mlakit.params.count_parameters` (the one counter
        of the course; its tests check it against this module's tensors), so it works on any device."""
        return count_parameters(self.config, active=active, include_mtp=include_mtp)

    # ------------------------------------------------------------ checkpoints
    def save_pretrained(self, path) -> Path:
        """Write this model in transformers' DeepseekV3 layout (see :mod:`mlakit.checkpoint`); returns the folder."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, path)

    @classmethod
    def from_pretrained(cls, path, device: torch.device | str = "cpu") -> MiniDeepSeek:
        """Load a model written by :meth:`save_pretrained` (or by transformers) bit for bit, onto ``device``."""
        from .checkpoint import from_pretrained

        return from_pretrained(path, device=device)

    # --------------------------------------------------------------- kernels
    def set_kernel_backend(self, backend: str) -> MiniDeepSeek:
        """Set every kernel-backed module (RMSNorm, DeepSeekMoE) to ``backend``: "torch", "triton" or
        "auto" (:func:`mlakit.kernels.set_backend`). Returns the model."""
        from .kernels import set_backend

        set_backend(self, backend)
        return self

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
