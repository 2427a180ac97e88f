"""Autoregressive generation with a KV or latent cache: greedy, temperature, top-k, top-p, batched.

Without a cache every step runs the whole sequence again: step t costs O(t)
token computations and the whole generation O(T^2). With a cache each step
runs one new token and reads the cached keys and values (or, for MLA, the
cached latents through the absorbed path) of the others: the compute per step
is constant and the cost moves to memory traffic, which is why the size of the
cache decides decoding speed (DeepSeek-V2 §2.1).

Batches of prompts of different lengths are left-padded (see
``CharTokenizer.encode_batch``) and carry an attention mask, so every row
continues from its last column and no token attends to padding.
"""

from __future__ import annotations

import torch
from torch import nn


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B, 1) from logits (B, vocab): greedy at temperature 0, else sampled.

    top_k keeps the k most likely tokens; top_p keeps the smallest set whose
    probability reaches p (nucleus sampling, Holtzman et al. 2019). Both apply
    after the temperature.
    """
    if temperature < 0:
        raise ValueError(f"temperature={temperature} is invalid: must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} is invalid: must be >= 1 (or None)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} is invalid: must be in (0, 1] (or None)")
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)  # (B, 1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, vocab)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (B, 1)


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, use_cache: bool = True,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             attention_mask: torch.Tensor | None = None, eos_id: int | None = None, pad_id: int = 0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens.

    Returns (B, T + n) with n <= max_new_tokens: generation stops early once every
    row has produced ``eos_id``; after its eos a row is filled with ``pad_id``.
    The model must take ``(ids, cache, attention_mask)`` and offer
    ``new_cache(batch_size, max_len)``.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: must be >= 0")
    B, T = input_ids.shape
    ids = input_ids
    mask = attention_mask.long() if attention_mask is not None else None
    cache = model.new_cache(B, T + max_new_tokens) if use_cache else None
    finished = torch.zeros(B, 1, dtype=torch.bool, device=ids.device)
    step_input = ids
    for _ in range(max_new_tokens):
        logits = model(step_input, cache, mask)[:, -1]  # (B, vocab): the last position predicts the next token
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B, 1)
        nxt = nxt.masked_fill(finished, pad_id)
        ids = torch.cat([ids, nxt], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        if eos_id is not None:
            finished |= nxt == eos_id
            if bool(finished.all()):
                break
        step_input = nxt if use_cache else ids  # with a cache only the new token goes in
    return ids
