"""Autoregressive generation, with or without a KV cache.

Without a cache every step runs the whole sequence again: step t costs O(t)
token computations and the whole generation O(T^2). With a cache each step
runs one new token and reads the cached keys and values of the others: the
compute per step is constant and the cost moves to memory traffic, which is
why the size of the cache decides decoding speed (DeepSeek-V2 §2.1).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, use_cache: bool = True,
             temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend ``input_ids`` (B, T) by ``max_new_tokens`` tokens; greedy when temperature is 0.

    Returns (B, T + max_new_tokens). The model must take ``(ids, cache)`` and
    offer ``new_cache(batch_size, max_len)``.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: must be >= 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} is invalid: must be >= 0 (0 = greedy)")
    ids = input_ids
    cache = model.new_cache(ids.shape[0], ids.shape[1] + max_new_tokens) if use_cache else None
    step_input = ids
    for _ in range(max_new_tokens):
        logits = model(step_input, cache)[:, -1]  # (B, vocab): the last position predicts the next token
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        ids = torch.cat([ids, nxt], dim=1)
        step_input = nxt if use_cache else ids  # with a cache only the new token goes in
    return ids
