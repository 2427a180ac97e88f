"""Losses as functions beside the model: next-token, multi-token prediction, balance, per-token log-probs.

The model's forward returns what it computed (:class:`mlakit.model.ModelOutput`:
logits, and on request hidden states, MTP logits and routing); every training
stage composes these functions over it. Pretraining adds the three parts of
DeepSeek-V3's objective (§2.2, §2.1.2):

    L = L_main + lambda/D * sum_k L_MTP^k + alpha * sum_layers L_Bal

SFT uses :func:`lm_loss` with a mask on the completion, distillation adds a
KL term on the logits (:func:`distill_loss`, Hinton et al. 2015), and GRPO needs
:func:`token_logprobs` of the sampled tokens under the policy, the old policy
and the reference model.

Every mean is over the positions where the mask is True (all when it is None),
so padded and prompt positions never count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .moe import RouterOutput, sequence_balance_loss


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (B, T) over the positions where ``mask`` is True (all when None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy (B, T) in float32 of logits (B, T, vocab) against targets (B, T)."""
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), reduction="none").view(B, T)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy, averaged over the masked positions.

    ``targets[:, i]`` is the token after position i (t_{i+1}); ``mask`` (B, T) selects the
    positions that count (not the prompt, not padding).
    """
    return _masked_mean(cross_entropy(logits, targets), mask)


def mtp_loss(mtp_logits: Sequence[torch.Tensor], targets: torch.Tensor, mask: torch.Tensor | None = None,
             weight: float = 1.0) -> torch.Tensor:
    """V3's MTP loss (eq. 25): weight (lambda) times the mean over depths k of each depth's cross-entropy.

    ``mtp_logits[k - 1]`` (B, T - k, vocab) at position i predicts t_{i+k+1} = ``targets[:, i + k]``,
    so depth k is scored against ``targets[:, k:]`` under ``mask[:, k:]``.
    """
    if not len(mtp_logits):
        raise ValueError("mtp_loss needs the MTP logits of at least one depth (forward with output_mtp=True)")
    depths = [lm_loss(logits_k, targets[:, k:], mask[:, k:] if mask is not None else None)
              for k, logits_k in enumerate(mtp_logits, start=1)]
    return weight * torch.stack(depths).mean()


def balance_loss(routing: Sequence[RouterOutput], alpha: float, batch_size: int = 1) -> torch.Tensor:
    """V3's complementary sequence-wise balance loss summed over MoE layers (§2.1.2, eqs. 17-20).

    ``routing`` holds one :class:`~mlakit.moe.RouterOutput` per MoE layer, as the model's forward
    returns them; each layer's rows are ``batch_size`` consecutive sequences of equal length
    (an MTP block at depth k sees sequences k tokens shorter than the main blocks).
    """
    if not len(routing):
        raise ValueError("balance_loss needs the routing of at least one MoE layer (forward with output_routing=True)")
    return sum(sequence_balance_loss(r.scores, r.indices, alpha, r.scores.shape[0] // batch_size) for r in routing)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
                   temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[target] per position, (B, T) float32; 0 where ``mask`` is False.

    ``logits`` (B, T, vocab) and ``targets`` (B, T): the log-probability of each target
    token under the distribution a sampler at this temperature draws from (GRPO's
    log pi(o_t | q, o_<t)). Computed as logit - logsumexp, without a (B, T, vocab)
    log-softmax copy.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} is invalid: must be > 0 (greedy decoding has no log-probs)")
    scaled = logits.float() / temperature  # (B, T, vocab)
    picked = scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    logp = picked - torch.logsumexp(scaled, dim=-1)  # (B, T)
    return logp if mask is None else logp.masked_fill(~mask.bool(), 0.0)


@dataclass
class LossOutput:
    """A training loss and its parts; ``output`` is the forward it came from (routing for the bias update)."""

    loss: torch.Tensor  # the sum of the parts, what backward runs on
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> scalar tensor
    output: object | None = None  # the ModelOutput


def pretrain_loss(model, batch: dict[str, torch.Tensor]) -> LossOutput:
    """DeepSeek-V3's pretraining loss of ``model`` on ``batch`` (input_ids, targets, optional loss_mask).

    Parts: ``main`` (next token), ``mtp`` (lambda times the mean MTP cross-entropy, when the
    model has MTP modules and the sequence is long enough) and ``balance`` (alpha times the
    sequence-wise balance loss summed over every MoE layer that ran, the MTP blocks'
    included, when ``aux_loss_alpha`` > 0).
    """
    config = model.config
    ids, targets, mask = batch["input_ids"], batch["targets"], batch.get("loss_mask")
    out = model(ids, output_mtp=True, output_routing=True)
    parts = {"main": lm_loss(out.logits, targets, mask)}
    if out.mtp_logits:
        parts["mtp"] = mtp_loss(out.mtp_logits, targets, mask, config.mtp_loss_weight)
    if config.aux_loss_alpha > 0 and out.routing:
        parts["balance"] = balance_loss(out.routing, config.aux_loss_alpha, batch_size=ids.shape[0])
    return LossOutput(sum(parts.values()), parts, out)


# ------------------------------------------------------------------ distillation
DISTILL_TEMPERATURE = 2.0  # softens both distributions so the teacher's ranking of wrong tokens shows
DISTILL_ALPHA = 0.5  # weight of the hard-target cross-entropy; 1 - alpha goes to the KL term


def kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) per position, (B, T) float32.

    ``student_logits`` and ``teacher_logits`` (B, T, vocab) over the same vocabulary. The
    teacher is detached: its distribution is a fixed target, so no gradient reaches it.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} is invalid: must be > 0")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: logit distillation needs the same batch, "
                         f"length and vocabulary (a teacher with another tokenizer cannot be matched token "
                         f"by token; use sequence-level distillation, SFT on its outputs)")
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, T, vocab) student
    log_p = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # (B, T, vocab) teacher
    return (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, T)


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is invalid: must be in [0, 1] (1 = cross-entropy only, 0 = KL only)")


def _distill_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                   mask: torch.Tensor | None, temperature: float, alpha: float) -> dict[str, torch.Tensor]:
    """The two weighted terms of :func:`distill_loss`: ``ce`` and ``kl`` (their sum is the loss)."""
    _check_alpha(alpha)
    kl = _masked_mean(kl_per_token(student_logits, teacher_logits, temperature), mask)
    return {"ce": alpha * lm_loss(student_logits, targets, mask), "kl": (1.0 - alpha) * temperature**2 * kl}


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                 mask: torch.Tensor | None = None, temperature: float = DISTILL_TEMPERATURE,
                 alpha: float = DISTILL_ALPHA) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015, §2): hard targets plus the teacher's soft ones.

        L = alpha * CE(student, targets) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

    both terms averaged over the positions where ``mask`` (B, T) is True. Logits are
    (B, T, vocab), targets (B, T). The T^2 keeps the soft term's gradient on the scale of
    the hard term's as T changes (the soft gradients shrink as 1 / T^2). The teacher is
    detached: only the student learns. alpha = 1 is plain cross-entropy (SFT).
    """
    return sum(_distill_parts(student_logits, teacher_logits, targets, mask, temperature, alpha).values())


def distill_loss_fn(teacher, temperature: float = DISTILL_TEMPERATURE, alpha: float = DISTILL_ALPHA):
    """A Trainer ``loss_fn(model, batch)`` for logit distillation from a frozen ``teacher``.

    The teacher is put in eval mode and runs under ``torch.no_grad`` on the batch's
    input_ids (on its own device); the student runs as in pretraining, with its routing
    for the balancing bias. Parts: ``ce`` and ``kl`` (the weighted terms of
    :func:`distill_loss`) and ``balance`` when the student's ``aux_loss_alpha`` > 0.
    The student's MTP modules are not trained here (the teacher gives next-token
    logits only): a simplification; SFT trains them.
    """
    _check_alpha(alpha)
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} is invalid: must be > 0")
    teacher.eval()

    def loss_fn(model, batch: dict[str, torch.Tensor]) -> LossOutput:
        ids, targets, mask = batch["input_ids"], batch["targets"], batch.get("loss_mask")
        out = model(ids, output_routing=True)
        teacher_device = next(teacher.parameters()).device
        with torch.no_grad():
            teacher.eval()  # dropout off, whatever the caller did since
            t_out = teacher(ids.to(teacher_device))
        teacher_logits = getattr(t_out, "logits", t_out).to(out.logits.device)  # (B, T, vocab)
        parts = _distill_parts(out.logits, teacher_logits, targets, mask, temperature, alpha)
        alpha_bal = model.config.aux_loss_alpha
        if alpha_bal > 0 and out.routing:
            parts["balance"] = balance_loss(out.routing, alpha_bal, batch_size=ids.shape[0])
        return LossOutput(sum(parts.values()), parts, out)

    return loss_fn


__all__ = ["cross_entropy", "lm_loss", "mtp_loss", "balance_loss", "token_logprobs", "LossOutput", "pretrain_loss",
           "DISTILL_TEMPERATURE", "DISTILL_ALPHA", "kl_per_token", "distill_loss", "distill_loss_fn"]
