"""Baseline attention: multi-head (MHA), grouped-query (GQA) and multi-query (MQA), with a KV cache.

These are the designs MLA is measured against (DeepSeek-V2 §2.1.1). One class
covers all three: MHA has one KV head per query head, GQA (Ainslie et al. 2023,
arXiv 2305.13245) shares each KV head among a group of query heads, MQA
(Shazeer 2019, arXiv 1911.02150) shares one KV head among all of them. Only the
number of KV heads changes, and with it the size of the cache.

The cache (:class:`~mlakit.cache.KVCache`, defined in :mod:`mlakit.cache` and
importable from here) is preallocated to a maximum length, so its memory is
fixed up front and ``nbytes`` is exactly what :mod:`mlakit.kvcache` predicts;
writing past the end raises a clear error instead of silently reallocating.

The attention math is written out (scores, causal mask, softmax, weighted sum)
rather than calling a fused kernel, so the lessons can read it line by line.
"""

from __future__ import annotations

import torch
from torch import nn

from .cache import CacheFullError, KVCache, PreallocatedCache
from .config import ModelConfig
from .layers import RotaryEmbedding, softmax_scale


def causal_mask(q_len: int, k_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (q_len, k_len) mask, True where query i may see key j.

    The queries are the last q_len of the k_len positions (a decode step after a
    cached prefix), so query i sits at absolute position k_len - q_len + i.
    """
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                                 causal: bool = True, dropout_p: float = 0.0,
                                 key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, for q (B, H, T, d) and k, v (B, H or 1, S, d).

    A key/value head axis of size 1 broadcasts over all query heads (MQA, and
    MLA's absorbed path). ``key_mask`` (B, S), True for real tokens, hides
    padding; a position always sees itself, so a padding query gets a finite
    (ignored) output instead of NaN. ``dropout_p`` drops attention
    probabilities (training only).
    """
    B, H, T, _ = q.shape
    S = k.shape[-2]
    fold = k.shape[1] == 1 and H > 1  # one shared KV head: fold the query heads into rows, no per-head copies
    if fold:
        q = q.reshape(B, 1, H * T, q.shape[-1])  # (B, 1, H*T, d): row h*T + t is head h at position t
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S), or (B, 1, H*T, S) folded
    if causal and T == 1 and key_mask is None:
        causal = False  # one new query after its whole context: the causal mask hides nothing
    if causal and key_mask is None and T < S:
        # a few queries after a cached prefix (a speculative verify): only the last T - 1 keys lie in some
        # query's future, so mask that (T, T - 1) corner in place instead of building a (T, S) mask
        future = torch.ones(T, T - 1, dtype=torch.bool, device=q.device).triu()  # key S - T + 1 + c is after query t iff c >= t
        scores.view(B, H, T, S)[..., S - T + 1:].masked_fill_(future, float("-inf"))  # folded rows are head-major too
    elif causal or key_mask is not None:
        allowed = causal_mask(T, S, q.device) if causal else torch.ones(T, S, dtype=torch.bool, device=q.device)
        if key_mask is not None:
            itself = torch.arange(S, device=q.device) == torch.arange(S - T, S, device=q.device)[:, None]  # (T, S)
            allowed = (allowed & key_mask[:, None, None, :]) | itself  # (B, 1, T, S)
        if fold:
            allowed = allowed.repeat(*([1] * (allowed.dim() - 2)), H, 1)  # (..., H*T, S): same mask for every head
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p:
        probs = torch.nn.functional.dropout(probs, dropout_p)
    out = probs @ v  # (B, H, T, d_v), or (B, 1, H*T, d_v) folded
    return out.reshape(B, H, T, v.shape[-1]) if fold else out


class Attention(nn.Module):
    """MHA / GQA / MQA self-attention with rotary embedding and an optional KV cache."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__()
        if config.attn_type == "mla":
            raise ValueError("Attention implements attn_type 'mha', 'gqa' and 'mqa'; use mlakit.mla for 'mla'")
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self.rope = RotaryEmbedding(self.head_dim, config.rope_theta, config.rope_interleave, config.rope_scaling)
        self.scale = softmax_scale(self.head_dim, config.rope_scaling)
        self.dropout = config.attention_dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). ``key_mask`` (B, S): True for real tokens over cached + new positions."""
        B, T, _ = x.shape
        start = cache.lengths[self.layer_idx] if cache is not None else 0
        positions = torch.arange(start, start + T, device=x.device)  # (T,)
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, n_h, T, d_h)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, T, d_h)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, T, d_h)
        q, k = self.rope(q, positions), self.rope(k, positions)
        if cache is not None:
            cache.write(self.layer_idx, k, v)
            k, v = cache.read(self.layer_idx)  # (B, n_kv, S, d_h) each, S = start + T
        group = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(group, dim=1)  # (B, n_h, S, d_h): each KV head serves `group` query heads
        v = v.repeat_interleave(group, dim=1)  # (B, n_h, S, d_h)
        out = scaled_dot_product_attention(q, k, v, self.scale, causal=True, key_mask=key_mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, n_h, T, d_h)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, n_h * d_h)
        return self.o_proj(out)


__all__ = ["Attention", "KVCache", "PreallocatedCache", "CacheFullError", "causal_mask", "scaled_dot_product_attention"]
