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

For reinforcement learning, ``generate(..., num_return_sequences=G, return_dict=True)``
samples a group of G completions per prompt from one prefill and returns the
log-probability of every sampled token with a completion mask (GRPO's rollout).
Speculative decoding with the MTP module as drafter is :func:`speculative_generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .losses import token_logprobs


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


@dataclass
class GenerateOutput:
    """What :func:`generate` returns with ``return_dict=True``; rows are prompt-major (row i * G + j
    is sample j of prompt i, G = num_return_sequences), n <= max_new_tokens new tokens."""

    sequences: torch.Tensor  # (B * G, T + n) each prompt, repeated G times, then its new tokens
    completion_mask: torch.Tensor  # (B * G, n) bool: True on generated tokens up to and including eos
    logprobs: torch.Tensor  # (B * G, n) float32: log-prob of each new token (see generate); 0 off the mask


def check_positions(model: nn.Module, prompt_len: int, max_new_tokens: int) -> None:
    """Refuse a generation whose positions would pass the model's ``max_position_embeddings``."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"a prompt of {prompt_len} tokens plus max_new_tokens={max_new_tokens} needs "
            f"{prompt_len + max_new_tokens} positions, more than the model's max_position_embeddings={limit}; "
            "shorten the prompt or ask for fewer new tokens")


def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, use_cache: bool = True,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             attention_mask: torch.Tensor | None = None, eos_id: int | None = None, pad_id: int = 0,
             generator: torch.Generator | None = None, streamer=None, num_return_sequences: int = 1,
             return_dict: bool = False) -> torch.Tensor | GenerateOutput:
    """Extend ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens.

    Returns (B * G, T + n) with n <= max_new_tokens and G = ``num_return_sequences``:
    generation stops early once every row has produced ``eos_id``; after its eos a
    row is filled with ``pad_id``. The model must take ``(ids, cache, attention_mask)``
    and offer ``new_cache(batch_size, max_len)``; prompt plus new tokens must fit in
    its ``max_position_embeddings``.

    ``num_return_sequences`` G > 1 draws G samples per prompt (GRPO's group) from
    one prefill: the prompts run once, then the cache is expanded
    (:meth:`~mlakit.cache.PreallocatedCache.expand`) and rows are prompt-major, as in
    transformers: row i * G + j is sample j of prompt i, the same tokens as
    generating from ``input_ids.repeat_interleave(G, 0)`` with the same generator.

    ``return_dict=True`` returns a :class:`GenerateOutput` with ``sequences``,
    ``completion_mask`` and ``logprobs``. The log-probs are those of the
    temperature-scaled distribution, log softmax(logits / temperature)[token]:
    what :func:`mlakit.losses.token_logprobs` recomputes from the same logits at the
    same temperature, and what GRPO wants as the old policy's log-probs (TRL
    computes them the same way, without top-k / top-p), so the importance ratio of
    an unchanged policy is 1. top_k and top_p change which tokens can be drawn, not
    these numbers: they are not the log-probs of the truncated, renormalised
    distribution the sampler used (those are larger by -log of the probability
    mass top-k / top-p keep).
    Greedy decoding (temperature 0) records log softmax(logits)[token], the raw
    logits at temperature 1.

    ``streamer``, as in transformers' ``generate``, gets ``put(input_ids)`` first (the
    prompts repeated G times), then ``put(tokens)`` (B * G,) for every new token as
    soon as it is chosen, then ``end()``: print text as it comes, or time each token.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: must be >= 0")
    G = num_return_sequences
    if isinstance(G, bool) or not isinstance(G, int) or G < 1:
        raise ValueError(f"num_return_sequences={G!r} is invalid: must be a positive integer")
    check_positions(model, input_ids.shape[1], max_new_tokens)
    # The loop runs in inference mode (no autograd bookkeeping on any op: about 10% of a small model's decode
    # step); what it returns is copied out of inference mode, so callers may train on it (GRPO's rollouts).
    with torch.inference_mode():
        out = _decode(model, input_ids, max_new_tokens, use_cache, temperature, top_k, top_p, attention_mask,
                      eos_id, pad_id, generator, streamer, G, return_dict)
    if not return_dict:
        return out.clone()
    return GenerateOutput(out.sequences.clone(), out.completion_mask.clone(), out.logprobs.clone())


def _decode(model, input_ids, max_new_tokens, use_cache, temperature, top_k, top_p, attention_mask, eos_id,
            pad_id, generator, streamer, G, return_dict):
    """:func:`generate`'s loop, on checked arguments, in inference mode."""
    B, T = input_ids.shape
    ids = input_ids
    mask = attention_mask.long() if attention_mask is not None else None
    cache = model.new_cache(B, T + max_new_tokens) if use_cache else None
    expand_after_prefill = G > 1 and use_cache  # one prefill of B prompts, then G copies of its cache
    if G > 1 and not use_cache:  # nothing to share: every step runs the whole sequence anyway
        ids = ids.repeat_interleave(G, dim=0)  # (B * G, T)
        mask = mask.repeat_interleave(G, dim=0) if mask is not None else None
    finished = torch.zeros(B * G, 1, dtype=torch.bool, device=ids.device)
    logprobs, completion = [], []
    step_input = ids
    if streamer is not None:
        streamer.put(input_ids.repeat_interleave(G, dim=0) if G > 1 else input_ids)
    for step in range(max_new_tokens):
        logits = model(step_input, cache, mask).logits[:, -1]  # (B, vocab): the last position predicts the next token
        if step == 0 and expand_after_prefill:
            logits = logits.repeat_interleave(G, dim=0)  # (B * G, vocab): row i * G + j continues prompt i
            cache = cache.expand(G)
            ids = ids.repeat_interleave(G, dim=0)
            mask = mask.repeat_interleave(G, dim=0) if mask is not None else None
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B * G, 1)
        if return_dict:
            logprobs.append(token_logprobs(logits[:, None], nxt, temperature=temperature or 1.0))  # (B * G, 1)
            completion.append(~finished)
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
    if ids.shape[0] != B * G:  # max_new_tokens = 0: no prefill ran
        ids = ids.repeat_interleave(G, dim=0)
    if streamer is not None:
        streamer.end()
    if not return_dict:
        return ids
    n = ids.shape[1] - T
    completion_mask = torch.cat(completion, dim=1) if n else torch.zeros(B * G, 0, dtype=torch.bool, device=ids.device)
    lp = torch.cat(logprobs, dim=1) if n else torch.zeros(B * G, 0, device=ids.device)
    return GenerateOutput(ids, completion_mask, lp.masked_fill(~completion_mask, 0.0))


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
                         eos_id: int | None = None, streamer=None) -> tuple[torch.Tensor, SpeculativeStats]:
    """Greedy decoding that uses the first MTP module as a one-token drafter (DeepSeek-V3 §2.2, §5.4.3).

    Each step feeds the main model two tokens in one forward pass: the next token
    (already decided) and the MTP module's guess for the one after. If the main
    model's own prediction agrees with the guess, both are kept and a third is
    already decided: two tokens for one forward pass. If not, the guess is dropped
    from the cache (:meth:`~mlakit.cache.PreallocatedCache.truncate`) and the
    corrected token is kept. The output equals plain greedy decoding; only the
    number of forward passes changes. Batch size 1.

    Per step: one main-model forward over the two tokens (on MLA's absorbed path,
    as a decode step: they continue a cached prefix), one MTP block over the one or
    two new positions and the LM head on the last of them only. Tokens stay on the
    model's device in one preallocated row; the only host round trip is the
    accept/reject decision (and the eos check with it).

    ``streamer`` gets ``put(input_ids)`` first, then ``put(tokens)`` with the one or
    two tokens (k,) each step decides (the first after the prefill of the main model
    and of the MTP block), then ``end()`` (transformers' ``TextStreamer`` takes that
    for a batch of one).
    """
    if input_ids.shape[0] != 1:
        raise ValueError(f"speculative_generate decodes one sequence at a time; got a batch of {input_ids.shape[0]}")
    if not len(getattr(model, "mtp", ())):
        raise ValueError("speculative_generate needs a model with an MTP module (num_nextn_predict_layers >= 1)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: must be >= 0")
    T = input_ids.shape[1]
    check_positions(model, T, max_new_tokens)
    stats = SpeculativeStats()
    if streamer is not None:
        streamer.put(input_ids)
    if max_new_tokens == 0:
        if streamer is not None:
            streamer.end()
        return input_ids.clone(), stats
    mtp, L = model.mtp[0], model.config.num_hidden_layers
    cache = model.new_cache(1, T + max_new_tokens + 2, include_mtp=True)
    main_layers = range(L)  # the MTP block caches in layer L; its entries are never rolled back
    # tokens[:, :d] are decided (prompt, then new tokens); tokens[:, d] holds the pending guess; the main
    # model has cached positions 0 .. d - 2, so every step feeds tokens[:, d - 1 : d + 1]
    tokens = input_ids.new_zeros(1, T + max_new_tokens + 2)
    tokens[:, :T] = input_ids
    limit = T + max_new_tokens  # decided tokens past it are dropped

    def main(step_tokens):  # main model on new tokens: hidden (1, n, d) and its greedy next ids (n,)
        stats.main_forwards += 1
        h = model.hidden_states(step_tokens, cache)
        return h, model.lm_head(model.norm(h))[0].argmax(-1)

    def draft(h, next_tokens):  # MTP on (h_i, t_{i+1}) pairs -> its guess (1,) for the token after the last
        out = mtp(h, model.embed_tokens(next_tokens), cache)  # (1, n, d)
        return model.lm_head(mtp.shared_head_norm(out[:, -1]))[0].argmax(-1, keepdim=True)  # head on the last only

    h, preds = main(input_ids)
    tokens[0, T] = preds[-1]  # t_T, decided
    d = T + 1
    end, stop = d, eos_id is not None and int(tokens[0, T]) == eos_id  # the output is tokens[:, :end]
    if not stop:
        tokens[0, d] = draft(h, tokens[:, 1:d])[0]  # the MTP block's prefill is part of the prefill
    if streamer is not None:
        streamer.put(tokens[0, T:d])
    while not stop and end < limit:
        h, preds = main(tokens[:, d - 1: d + 1])  # positions d - 1 (decided token) and d (the guess)
        stats.drafted += 1
        verdict = preds[:1] == tokens[0, d]  # (1,): the main model's token for position d agrees with the guess
        if eos_id is not None:
            verdict = torch.cat([verdict, preds == eos_id])  # (3,): agreed, eos at d, eos at d + 1
        flags = verdict.tolist()  # the step's one host round trip
        tokens[0, d: d + 2] = preds  # position d is decided either way; d + 1 only if the guess was right
        first = d
        if flags[0]:
            stats.accepted += 1
            d += 2
            guess = draft(h, preds[None])  # pairs (h_{d-3}, t_{d-2}), (h_{d-2}, t_{d-1}) -> t_d
        else:
            d += 1
            cache.truncate(d - 1, main_layers)  # drop the rejected guess
            guess = draft(h[:, :1], preds[None, :1])  # pair (h_{d-2}, t_{d-1}) -> t_d
        tokens[0, d] = guess[0]
        end = min(d, limit)
        if eos_id is not None and (flags[1] or (flags[0] and flags[2])):
            stop = True
            end = min(first + 1 if flags[1] else first + 2, limit)  # up to and including the first eos
        if streamer is not None:
            streamer.put(tokens[0, first:end])
    if streamer is not None:
        streamer.end()
    return tokens[:, :end].clone(), stats
