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

from dataclasses import dataclass

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
             generator: torch.Generator | None = None, streamer=None) -> torch.Tensor:
    """Extend ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens.

    Returns (B, T + n) with n <= max_new_tokens: generation stops early once every
    row has produced ``eos_id``; after its eos a row is filled with ``pad_id``.
    The model must take ``(ids, cache, attention_mask)`` and offer
    ``new_cache(batch_size, max_len)``. ``streamer``, as in transformers'
    ``generate``, gets ``put(input_ids)`` first, then ``put(tokens)`` (B,) for
    every new token as soon as it is chosen, then ``end()``: print text as it
    comes, or time each token.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: must be >= 0")
    B, T = input_ids.shape
    ids = input_ids
    mask = attention_mask.long() if attention_mask is not None else None
    cache = model.new_cache(B, T + max_new_tokens) if use_cache else None
    finished = torch.zeros(B, 1, dtype=torch.bool, device=ids.device)
    step_input = ids
    if streamer is not None:
        streamer.put(input_ids)
    for _ in range(max_new_tokens):
        logits = model(step_input, cache, mask).logits[:, -1]  # (B, vocab): the last position predicts the next token
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B, 1)
        nxt = nxt.masked_fill(finished, pad_id)
        if streamer is not None:
            streamer.put(nxt[:, 0])
        ids = torch.cat([ids, nxt], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        if eos_id is not None:
            finished |= nxt == eos_id
            if bool(finished.all()):
                break
        step_input = nxt if use_cache else ids  # with a cache only the new token goes in
    if streamer is not None:
        streamer.end()
    return ids


@dataclass
class SpeculativeStats:
    drafted: int = 0  # second tokens proposed by the MTP module
    accepted: int = 0  # of which the main model agreed with
    main_forwards: int = 0  # forward passes of the main model (prefill included)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(1, self.drafted)

    @property
    def tokens_per_forward(self) -> float:
        """New tokens per main-model forward pass (plain decoding: 1)."""
        return (self.accepted + self.main_forwards) / max(1, self.main_forwards)


@torch.no_grad()
def speculative_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                         eos_id: int | None = None) -> tuple[torch.Tensor, SpeculativeStats]:
    """Greedy decoding that uses the first MTP module as a one-token drafter (DeepSeek-V3 §2.2, §5.4.3).

    Each step feeds the main model two tokens: the next token (already decided)
    and the MTP module's guess for the one after. If the main model's own
    prediction agrees with the guess, both are kept and a third is already
    decided: two tokens for one forward pass. If not, the guess is dropped from
    the cache (:meth:`~mlakit.attention.PreallocatedCache.truncate`) and the
    corrected token is kept. The output equals plain greedy decoding; only the
    number of forward passes changes. Batch size 1.
    """
    if input_ids.shape[0] != 1:
        raise ValueError(f"speculative_generate decodes one sequence at a time; got a batch of {input_ids.shape[0]}")
    if not len(getattr(model, "mtp", ())):
        raise ValueError("speculative_generate needs a model with an MTP module (num_nextn_predict_layers >= 1)")
    mtp, L = model.mtp[0], model.config.num_hidden_layers
    T = input_ids.shape[1]
    cache = model.new_cache(1, T + max_new_tokens + 2, include_mtp=True)
    main_layers = range(L)  # the MTP block caches in layer L; its entries are never rolled back
    stats = SpeculativeStats()

    def main(tokens):  # run the main model on new tokens; (hidden (1, n, d), greedy next ids (n,))
        stats.main_forwards += 1
        h = model.hidden_states(tokens, cache)
        return h, model.lm_head(model.norm(h))[0].argmax(-1)

    def draft(h, next_tokens):  # MTP on (h_i, t_{i+1}) pairs; its guess for the token after the last
        out = mtp(h, model.embed_tokens(next_tokens), cache)
        return int(model.lm_head(mtp.shared_head_norm(out))[0, -1].argmax())

    h, preds = main(input_ids)
    out = [int(preds[-1])]  # t_T, decided
    guess = draft(h, torch.tensor([[*input_ids[0, 1:].tolist(), out[-1]]]))
    while len(out) < max_new_tokens and (eos_id is None or out[-1] != eos_id):
        p = cache.lengths[0]  # positions the main model has cached
        h, preds = main(torch.tensor([[out[-1], guess]]))  # positions p (decided token) and p + 1 (the guess)
        stats.drafted += 1
        if int(preds[0]) == guess:
            stats.accepted += 1
            out += [guess, int(preds[1])]
            guess = draft(h, torch.tensor([out[-2:]]))
        else:
            out.append(int(preds[0]))
            cache.truncate(p + 1, main_layers)  # drop the rejected guess
            guess = draft(h[:, :1], torch.tensor([[out[-1]]]))
    out = out[:max_new_tokens]
    if eos_id is not None and eos_id in out:
        out = out[: out.index(eos_id) + 1]
    return torch.cat([input_ids, torch.tensor([out])], dim=1), stats
