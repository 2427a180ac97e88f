"""Checkers for the exercises of lesson 07: the mini-DeepSeek (the MTP input, the MTP loss, the completion-only
loss mask, the warmup + cosine learning rate).

The formulas follow DeepSeek-V3 §2.2 (arXiv 2412.19437) and the library:
:class:`mlakit.model.MTPModule` (h'_i = M [RMSNorm(Emb(t_{i+1})) ; RMSNorm(h_i)],
embedding first), :meth:`mlakit.model.MiniDeepSeek.forward` (the MTP head at
position i predicts t_{i+2}), :class:`mlakit.data.LMBatches` (which targets
count) and :func:`mlakit.train.lr_at` (linear warmup, cosine to a floor).
Each checker computes the mistakes learners make as whole alternative answers
and :func:`diagnose` names the one the learner's answer equals.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ModelConfig
from ...model import MTPModule
from ._core import Answer, _close, _expect_tensor, _Fail, checker, diagnose


# ---------------------------------------------------------------- 07.1
def _mtp_input(h, input_ids, embed_tokens, enorm, hnorm, eh_proj, *, hidden_first=False, shift="next",
               use_enorm=True, use_hnorm=True, swap_norms=False):
    """The MTP module's input projection, or one of its typical mistakes (keyword switches)."""
    if shift == "next":  # position i: h_i with Emb(t_{i+1})
        h_part, ids = h[:, :-1], input_ids[:, 1:]
    elif shift == "none":  # position i: h_i with Emb(t_i), the token h_i has already read
        h_part, ids = h[:, :-1], input_ids[:, :-1]
    else:  # "backwards": h_{i+1} with Emb(t_i)
        h_part, ids = h[:, 1:], input_ids[:, :-1]
    emb = embed_tokens(ids)  # (B, T - 1, d)
    e_norm, h_norm = (hnorm, enorm) if swap_norms else (enorm, hnorm)
    e = e_norm(emb) if use_enorm else emb
    x = h_norm(h_part) if use_hnorm else h_part
    parts = [x, e] if hidden_first else [e, x]
    return eh_proj(torch.cat(parts, dim=-1))  # (B, T - 1, d)


def reference_mtp_input(h: torch.Tensor, input_ids: torch.Tensor, embed_tokens: nn.Module, enorm: nn.Module,
                        hnorm: nn.Module, eh_proj: nn.Module) -> torch.Tensor:
    """h'_i = eh_proj([enorm(Emb(t_{i+1})) ; hnorm(h_i)]) for i = 0 .. T-2: (B, T - 1, d) from h (B, T, d).

    ``h`` is the main model's last hidden state (before its final norm) and
    ``input_ids`` (B, T) the tokens it read; the embedding half comes first, as
    in DeepSeek-V3's released weights. The last position has no t_{i+1} and is dropped.
    """
    return _mtp_input(h, input_ids, embed_tokens, enorm, hnorm, eh_proj)


_MTP_INPUT_MISTAKES = [
    (dict(hidden_first=True), "the hidden half comes first. Hint: the embedding of the next token comes first, "
                              "torch.cat([enorm(emb), hnorm(h)], dim=-1), the order of DeepSeek-V3's released eh_proj"),
    (dict(shift="none"), "position i is paired with the embedding of t_i, the token h_i has already read. "
                         "Hint: pair h_i with Emb(t_{i+1}): h[:, :-1] with embed_tokens(input_ids[:, 1:])"),
    (dict(shift="backwards"), "the shift goes the wrong way (h_{i+1} with Emb(t_i)). Hint: h[:, :-1] with "
                              "embed_tokens(input_ids[:, 1:])"),
    (dict(swap_norms=True), "the norms are swapped. Hint: enorm normalises the embedding, hnorm the hidden state"),
    (dict(use_enorm=False, use_hnorm=False), "neither half is normalised. Hint: apply enorm to the embedding and "
                                             "hnorm to the hidden state before concatenating"),
    (dict(use_enorm=False), "the embedding is not normalised. Hint: enorm(embed_tokens(...))"),
    (dict(use_hnorm=False), "the hidden state is not normalised. Hint: hnorm(h[:, :-1])"),
    (dict(hidden_first=True, use_enorm=False, use_hnorm=False), "the hidden half comes first and neither half is "
                                                                "normalised. Hint: [enorm(emb) ; hnorm(h)]"),
]


def _mtp_parts(seed: int, d: int = 16, vocab: int = 23):
    """An embedding and an MTP module of width d with non-trivial norm gains (so a missing norm shows)."""
    cfg = ModelConfig.from_preset("nano", vocab_size=vocab, hidden_size=d, num_hidden_layers=1, num_attention_heads=2,
                                  q_lora_rank=8, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4,
                                  intermediate_size=32, moe_intermediate_size=8, first_k_dense_replace=1,
                                  max_position_embeddings=32)
    with torch.random.fork_rng(devices=[]):  # the learner's random state is left as it was
        torch.manual_seed(seed)
        module, embed = MTPModule(cfg, 1), nn.Embedding(vocab, d)
        with torch.no_grad():
            module.enorm.weight.uniform_(0.5, 1.5)
            module.hnorm.weight.uniform_(1.5, 2.5)
            embed.weight.mul_(0.3)  # embeddings and hidden states of different sizes, as in a trained model
    return module, embed


@checker("07.1", "mtp_input")
def check_mtp_input(mtp_input: Answer) -> str:
    """Exercise 07.1: mtp_input(h, input_ids, embed_tokens, enorm, hnorm, eh_proj) -> (B, T - 1, d)."""

    cases = [(2, 7, 0), (1, 5, 1), (3, 2, 2)]
    for B, T, seed in cases:
        module, embed = _mtp_parts(seed)
        g = torch.Generator().manual_seed(100 + seed)
        h = torch.randn(B, T, 16, generator=g) * 4.0  # (B, T, d)
        ids = torch.randint(0, 23, (B, T), generator=g)  # (B, T)
        mods = (embed, module.enorm, module.hnorm, module.eh_proj)
        with torch.no_grad():
            want = reference_mtp_input(h, ids, *mods)
            got = mtp_input(h, ids, *mods)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (B, T, 16):
            raise _Fail(f"the result has all T = {T} positions; expected T - 1 = {T - 1}. Hint: the last position "
                        "has no next token t_{i+1}: use h[:, :-1] with embed_tokens(input_ids[:, 1:])")
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (B, T - 1, 32):
            raise _Fail("the result is 2d wide: the concatenation was not projected. Hint: apply eh_proj "
                        "(2d -> d) to torch.cat([...], dim=-1)")
        got = _expect_tensor(got, want.shape, f"mtp_input for B={B}, T={T}")
        if _close(got, want):
            continue
        with torch.no_grad():
            wrong = [(_mtp_input(h, ids, *mods, **switches), hint) for switches, hint in _MTP_INPUT_MISTAKES]
        diagnose(got, wrong)
        raise _Fail(f"values differ from the reference for B={B}, T={T}. Hint: "
                    "eh_proj(torch.cat([enorm(embed_tokens(input_ids[:, 1:])), hnorm(h[:, :-1])], dim=-1))")
    return f"matches the reference on {len(cases)} inputs: Emb(t_(i+1)) first, both normalised, T - 1 positions"


# ---------------------------------------------------------------- 07.2
def _ce(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           reduction="none").view(targets.shape)  # (B, n)


def _masked_mean(loss, mask):
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def reference_mtp_loss(mtp_logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the MTP head over the positions that count (before the weight lambda).

    ``mtp_logits`` (B, T - 1, V): position i predicts t_{i+2}. ``targets`` (B, T)
    hold the next tokens (targets[:, i] = t_{i+1}), so t_{i+2} is targets[:, i + 1];
    ``loss_mask`` (B, T) marks the targets that count, shifted the same way.
    """
    return _masked_mean(_ce(mtp_logits, targets[:, 1:]), loss_mask[:, 1:].float())


def _mtp_loss_mistakes(logits, targets, mask):
    mask = mask.float()
    shifted, ce = mask[:, 1:], _ce(logits, targets[:, 1:])
    same_as_main = _ce(logits, targets[:, :-1])
    per_row = ((ce * shifted).sum(1) / shifted.sum(1).clamp_min(1.0)).mean()
    return [
        (_masked_mean(same_as_main, mask[:, :-1]), "the head is trained on t_(i+1), the main model's target "
                                                   "(off by one). Hint: position i of the MTP head predicts t_(i+2) "
                                                   "= targets[:, i + 1]: use targets[:, 1:] and loss_mask[:, 1:]"),
        (_masked_mean(same_as_main, shifted), "the targets are not shifted (t_(i+1) instead of t_(i+2)). Hint: "
                                              "use targets[:, 1:]"),
        (ce.mean(), "every position counts, the prompt and the padding too. Hint: average only where "
                    "loss_mask[:, 1:] is 1: (loss * mask).sum() / mask.sum()"),
        (_masked_mean(ce, mask[:, :-1]), "the mask is not shifted with the targets. Hint: target targets[:, i + 1] "
                                         "counts when loss_mask[:, i + 1] is 1: use loss_mask[:, 1:]"),
        ((ce * shifted).sum(), "that is the sum over the counted positions. Hint: divide by how many count, "
                               "loss_mask[:, 1:].sum()"),
        ((ce * shifted).sum() / mask.sum(), "you divided by loss_mask.sum(), which also counts target 0, a target "
                                            "the MTP head never predicts. Hint: divide by the number of targets "
                                            "that count for the head, loss_mask[:, 1:].sum()"),
        (per_row, "that is the mean of per-sequence means. Hint: average over all counted tokens of the batch "
                  "at once, as the main loss does"),
        (0.3 * _masked_mean(ce, shifted), "the loss is already multiplied by lambda = 0.3. Hint: return the plain "
                                          "cross-entropy; the model applies mtp_loss_weight"),
    ]


@checker("07.2", "mtp_loss")
def check_mtp_loss(mtp_loss: Answer) -> str:
    """Exercise 07.2: mtp_loss(mtp_logits, targets, loss_mask) -> the MTP cross-entropy (a scalar tensor)."""

    g = torch.Generator().manual_seed(72)
    B, T, V = 3, 10, 11
    # (prompt before start, padding after end) per row, each row different: a completion-only mask first, then
    # one that counts every real target (LMBatches with completion_only=False), target 0 included, so that
    # loss_mask.sum() and loss_mask[:, 1:].sum() differ
    spans = [([2, 4, 3], [10, 7, 9]), ([0, 0, 0], [10, 7, 9])]
    cases = []
    for scale, (starts, ends) in zip((1.0, 3.0), spans, strict=True):
        logits = torch.randn(B, T - 1, V, generator=g) * scale  # (B, T - 1, V)
        targets = torch.randint(0, V, (B, T), generator=g)  # (B, T)
        mask = torch.zeros(B, T)
        for row, (s, e) in enumerate(zip(starts, ends, strict=True)):
            mask[row, s:e] = 1.0
        cases.append((logits, targets, mask))
    for logits, targets, mask in cases:
        want = reference_mtp_loss(logits, targets, mask)
        got = mtp_loss(logits, targets, mask)
        if not isinstance(got, torch.Tensor):
            raise _Fail(f"return a scalar torch.Tensor (so it can be backpropagated), got {type(got).__name__}")
        if got.numel() != 1:
            raise _Fail(f"the loss has shape {tuple(got.shape)}; expected a scalar. Hint: average the masked "
                        "per-token losses into one number")
        got = got.reshape(())
        if _close(got, want):
            continue
        diagnose(got, _mtp_loss_mistakes(logits, targets, mask),
                 prefix=f"your loss is {got.item():.4f}; expected {want.item():.4f}: ")
        raise _Fail(f"your loss is {got.item():.4f}; expected {want.item():.4f}. Hint: cross-entropy of "
                    "mtp_logits against targets[:, 1:], averaged where loss_mask[:, 1:] is 1")
    return f"matches the reference on {len(cases)} batches: predicts t_(i+2) and counts only masked positions"


# ---------------------------------------------------------------- 07.3
def _completion_mask(prompt_len: int, seq_len: int, width: int, first: int | None = None, end: int | None = None):
    mask = torch.zeros(width - 1)
    mask[(prompt_len - 1 if first is None else first): (seq_len - 1 if end is None else end)] = 1.0
    return mask


def reference_completion_mask(prompt_len: int, seq_len: int, width: int) -> torch.Tensor:
    """Loss mask (width - 1,) of one example: 1 for the targets that are completion tokens or the final eos.

    The example is ``<bos> prompt completion <eos>``, ``seq_len`` tokens of which
    the first ``prompt_len`` are ``<bos> prompt``, right-padded to ``width``. The
    model reads tokens 0 .. width-2 and target j is token j + 1, so the first
    completion token is target prompt_len - 1 and the eos is target seq_len - 2.
    """
    return _completion_mask(prompt_len, seq_len, width)


@checker("07.3", "completion_mask")
def check_completion_mask(completion_mask: Answer) -> str:
    """Exercise 07.3: completion_mask(prompt_len, seq_len, width) -> (width - 1,) float mask of the targets that count."""

    cases = [(7, 29, 31), (5, 12, 12), (4, 24, 30), (2, 3, 8)]
    for p, n, w in cases:
        want = reference_completion_mask(p, n, w)
        got = completion_mask(p, n, w)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (w,):
            raise _Fail(f"the mask has {w} entries, one per token; expected width - 1 = {w - 1}, one per target. "
                        "Hint: the model reads tokens 0 .. width-2 and predicts tokens 1 .. width-1")
        got = _expect_tensor(got, want.shape, f"completion_mask({p}, {n}, {w})")
        got = got.float()
        if torch.equal(got, want):
            continue
        where = f"for prompt_len={p}, seq_len={n}, width={w}"
        mistakes = [
            (_completion_mask(p, n, w, first=p), "the first completion token is not counted. Hint: target j is "
                                                 "token j + 1, so the first completion token (token prompt_len) "
                                                 "is target prompt_len - 1"),
            (_completion_mask(p, n, w, first=0), "the prompt counts too. Hint: the model is not asked to produce "
                                                 "the prompt: start at target prompt_len - 1"),
            (_completion_mask(p, n, w, first=1), "the prompt counts too. Hint: start at target prompt_len - 1"),
            (_completion_mask(p, n, w, end=n - 2), "the final <eos> is not counted. Hint: the model must learn "
                                                   "to stop: the eos is token seq_len - 1, target seq_len - 2"),
            (_completion_mask(p, n, w, end=n), "a padding token is counted. Hint: the last real target is the "
                                               "eos, target seq_len - 2; stop the slice at seq_len - 1"),
            (_completion_mask(p, n, w, end=w - 1), "the padding counts. Hint: stop at target seq_len - 2 "
                                                   "(slice end seq_len - 1)"),
            (_completion_mask(p, n, w, first=p, end=n), "the mask is one position late. Hint: target j is token "
                                                        "j + 1: shift the token positions left by one"),
        ]
        diagnose(got, mistakes, same=torch.equal, prefix=f"wrong mask {where}: ")
        raise _Fail(f"wrong mask {where}: {got.int().tolist()}; expected {want.int().tolist()}. "
                    "Hint: ones at targets prompt_len - 1 .. seq_len - 2, zeros elsewhere")
    return f"right on {len(cases)} examples: the completion and its eos count, the prompt and the padding do not"


# ---------------------------------------------------------------- 07.4
def _lr(step, steps, lr, warmup_steps, min_lr_ratio, *, warmup="step+1", floor=True, decay="cosine",
        span="after_warmup"):
    if warmup_steps and step < warmup_steps:
        if warmup == "none":
            return lr
        return lr * (step + (1 if warmup == "step+1" else 0)) / warmup_steps
    if span == "after_warmup":
        progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    else:  # the whole run: the cosine has already moved during warmup
        progress = min(1.0, step / max(1, steps))
    low = lr * min_lr_ratio if floor else 0.0
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return low + (lr - low) * shape


def reference_lr_schedule(step: int, steps: int, lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Learning rate of step ``step`` (0-based), as :func:`mlakit.train.lr_at`.

    Linear warmup lr * (step + 1) / warmup_steps for the first warmup_steps steps
    (so step 0 already moves the weights), then a cosine from lr down to the floor
    lr * min_lr_ratio over the remaining steps, and the floor after the end.
    """
    return _lr(step, steps, lr, warmup_steps, min_lr_ratio)


_LR_MISTAKES = [
    (dict(warmup="none"), "there is no warmup: step 0 already uses the peak rate. Hint: for step < warmup_steps "
                          "return lr * (step + 1) / warmup_steps; AdamW's first steps are noisy, warmup tames them"),
    (dict(warmup="step"), "step 0 gets a learning rate of 0, a wasted step. Hint: warm up with (step + 1) / "
                          "warmup_steps, so the last warmup step reaches the peak"),
    (dict(floor=False), "the cosine decays to 0 instead of the floor. Hint: decay to lr * min_lr_ratio: "
                        "floor + (lr - floor) * 0.5 * (1 + cos(pi * progress))"),
    (dict(floor=False, warmup="none"), "no warmup, and the cosine decays to 0. Hint: warm up linearly, then decay "
                                       "to lr * min_lr_ratio"),
    (dict(decay="linear"), "the decay is linear. Hint: 0.5 * (1 + cos(pi * progress)) goes from 1 to 0 along a "
                           "half cosine"),
    (dict(span="whole_run"), "the cosine starts counting at step 0 instead of at the end of the warmup. Hint: "
                             "progress = (step - warmup_steps) / (steps - warmup_steps)"),
]


def _same_rates(a: list[float], b: list[float]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12) for x, y in zip(a, b, strict=True))


@checker("07.4", "lr_schedule")
def check_lr_schedule(lr_schedule: Answer) -> str:
    """Exercise 07.4: lr_schedule(step, steps, lr, warmup_steps, min_lr_ratio) -> warmup, then cosine to a floor."""

    configs = [(300, 3e-3, 30, 0.1), (100, 1.0, 10, 0.1), (50, 0.5, 0, 0.2), (20, 2.0, 5, 0.0)]
    checked = 0
    for steps, lr, warmup, ratio in configs:
        probe = sorted({0, 1, max(0, warmup - 1), warmup, (warmup + steps) // 2, steps - 1, steps, steps + 5})
        got = [lr_schedule(s, steps, lr, warmup, ratio) for s in probe]
        want = [reference_lr_schedule(s, steps, lr, warmup, ratio) for s in probe]
        for s, value in zip(probe, got, strict=True):
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Fail(f"lr_schedule({s}, ...) returned {type(value).__name__}; return a float")
        got = [float(v) for v in got]
        checked += len(probe)
        if _same_rates(got, want):
            continue
        bad = next(i for i, (a, b) in enumerate(zip(got, want, strict=True))
                   if not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12))
        where = (f"for steps={steps}, lr={lr}, warmup_steps={warmup}, min_lr_ratio={ratio}: step {probe[bad]} "
                 f"gives {got[bad]:.6g}; expected {want[bad]:.6g}")
        wrong = [([_lr(s, steps, lr, warmup, ratio, **switches) for s in probe], hint)
                 for switches, hint in _LR_MISTAKES]
        diagnose(got, wrong, same=_same_rates, prefix=f"{where}: ")
        if probe[bad] >= steps:
            raise _Fail(f"{where}. Hint: after the last step the rate stays at the floor lr * min_lr_ratio "
                        "(clamp progress to 1)")
        raise _Fail(f"{where}. Hint: warmup lr * (step + 1) / warmup_steps, then floor + (lr - floor) * "
                    "0.5 * (1 + cos(pi * progress)) with progress = (step - warmup_steps) / (steps - warmup_steps)")
    return f"right at {checked} steps of {len(configs)} schedules: warmup, cosine, floor, and no warmup at all"


__all__ = ["reference_mtp_input", "check_mtp_input", "reference_mtp_loss", "check_mtp_loss",
           "reference_completion_mask", "check_completion_mask", "reference_lr_schedule", "check_lr_schedule"]
