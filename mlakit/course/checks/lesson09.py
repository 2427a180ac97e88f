"""Checkers for the exercises of lesson 09: SFT and distillation (the loss mask of a batch, the logit
distillation loss, the reasoning template).

The conventions are the library's: :class:`mlakit.data.LMBatches` (which targets count),
:func:`mlakit.losses.distill_loss` (Hinton et al. 2015: alpha * CE + (1 - alpha) * T^2 *
KL(softmax(teacher / T) || softmax(student / T)), both terms averaged over the masked
positions, the teacher detached) and :mod:`mlakit.data.template` (``<bos> prompt
<think>reasoning</think><answer>answer</answer> <eos>``, R1's format). Each checker computes
the mistakes learners make as whole alternative answers and :func:`diagnose` names the one
the learner's answer equals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data.reasoning import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from ...data.template import BOS, EOS, render, to_text
from ...losses import distill_loss
from ._core import Answer, _close, _expect_tensor, _Fail, checker, diagnose


# ---------------------------------------------------------------- 09.1
def _sft_mask(targets, prompt_lens, pad_id, *, start="p-1", pad=False, eos_out=False, eos_id=None, first_row=False,
              late_end=False):
    """The completion-only mask of a batch, or one of its typical mistakes (keyword switches)."""
    B, T = targets.shape
    lens = torch.as_tensor(prompt_lens).reshape(-1)
    if first_row:
        lens = lens[:1].expand(B)
    cols = torch.arange(T).unsqueeze(0)  # (1, T)
    first = {"p-1": lens - 1, "p": lens, "0": torch.zeros_like(lens)}[start].unsqueeze(1)  # (B, 1)
    real = torch.ones_like(targets, dtype=torch.bool) if pad else targets != pad_id  # (B, T)
    if late_end:  # one more column: the first padding target
        real = real | torch.cat([torch.ones(B, 1, dtype=torch.bool), real[:, :-1]], dim=1)
    mask = (cols >= first) & real
    if eos_out:
        mask = mask & (targets != eos_id)
    return mask.float()  # (B, T)


def reference_sft_loss_mask(targets: torch.Tensor, prompt_lens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Loss mask (B, T) of a right-padded batch: 1.0 for the targets that are completion tokens or the eos.

    ``targets[:, j]`` is token j + 1 of each example ``<bos> prompt completion <eos>``
    (padded with ``pad_id`` after its eos); ``prompt_lens`` (B,) counts ``<bos> prompt``. The
    first completion token is target ``prompt_len - 1``; the padding targets do not count.
    Equal to :class:`mlakit.data.LMBatches`' ``loss_mask``.
    """
    return _sft_mask(targets, prompt_lens, pad_id)


def _mask_cases():
    """Right-padded batches of examples (ids of <bos> prompt completion <eos>, prompt length): prompts of
    different lengths (an empty one, <bos> alone, among them) and one row without padding."""
    pad, bos, eos = 0, 1, 2
    g = torch.Generator().manual_seed(91)
    cases = []
    for shapes in ([(5, 9), (3, 12), (7, 8)], [(1, 6), (4, 4 + 7), (2, 5), (6, 10)]):
        rows = []
        for prompt_len, seq_len in shapes:
            body = torch.randint(7, 40, (seq_len - 2,), generator=g).tolist()  # no special token inside
            rows.append(([bos] + body + [eos], prompt_len))
        width = max(len(ids) for ids, _ in rows)
        seqs = torch.full((len(rows), width), pad, dtype=torch.long)
        for r, (ids, _) in enumerate(rows):
            seqs[r, :len(ids)] = torch.tensor(ids)
        cases.append((seqs[:, 1:], torch.tensor([p for _, p in rows]), pad, eos))
    return cases


_MASK_MISTAKES = [
    (dict(start="p"), "the first completion token is not counted. Hint: target j is token j + 1, so the first "
                      "completion token (token prompt_len) is target prompt_len - 1"),
    (dict(start="0"), "the prompt counts too: the model would be trained to write the question. Hint: start at "
                      "target prompt_len - 1 in each row"),
    (dict(pad=True), "the padding counts. Hint: a target equal to pad_id is padding: keep only targets != pad_id"),
    (dict(start="0", pad=True), "every target counts, the prompt and the padding too. Hint: ones from target "
                                "prompt_len - 1 up to the eos, where the padding starts"),
    (dict(eos_out=True), "the final <eos> is not counted: a model trained so never learns to stop. Hint: the eos "
                         "is the last target that counts"),
    (dict(start="p", late_end=True), "the mask is one position late. Hint: target j is token j + 1: shift the "
                                     "token positions left by one"),
    (dict(late_end=True), "one padding target is counted after the eos. Hint: the first padding target is where "
                          "targets == pad_id; a mask built from input_ids != pad_id is one position too long"),
    (dict(first_row=True), "every row uses the first row's prompt length. Hint: compare the column index with each "
                           "row's own prompt length, prompt_lens[:, None] - 1"),
]


@checker("09.1", "sft_loss_mask")
def check_sft_loss_mask(sft_loss_mask: Answer) -> str:
    """Exercise 09.1: sft_loss_mask(targets, prompt_lens, pad_id) -> (B, T) mask of the completion targets."""

    cases = _mask_cases()
    for targets, prompt_lens, pad_id, eos_id in cases:
        B, T = targets.shape
        want = reference_sft_loss_mask(targets, prompt_lens, pad_id)
        got = sft_loss_mask(targets, prompt_lens, pad_id)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (B, T + 1):
            raise _Fail(f"the mask has T + 1 = {T + 1} columns, one per token; expected T = {T}, one per target "
                        "(the shape of targets)")
        got = _expect_tensor(got, want.shape, f"sft_loss_mask for a batch of shape {tuple(targets.shape)}")
        got = got.detach().float()
        if torch.equal(got, want):
            continue
        where = f"for prompt_lens={prompt_lens.tolist()}: "
        wrong = [(_sft_mask(targets, prompt_lens, pad_id, eos_id=eos_id, **switches), hint)
                 for switches, hint in _MASK_MISTAKES]
        diagnose(got, wrong, same=torch.equal, prefix=where)
        row = int((got != want).any(1).nonzero()[0, 0])
        raise _Fail(f"{where}row {row} is {got[row].int().tolist()}; expected {want[row].int().tolist()}. Hint: ones "
                    "at targets prompt_len - 1 up to the eos, zeros on the prompt and the padding")
    return (f"right on {len(cases)} batches: each row counts its completion and eos, never its prompt nor the "
            "padding")


# ---------------------------------------------------------------- 09.2
def _kl(p_logits, q_logits, T_p, T_q):
    """KL(softmax(p / T_p) || softmax(q / T_q)) per position (B, T), float64."""
    log_p = torch.log_softmax(p_logits.double() / T_p, -1)
    log_q = torch.log_softmax(q_logits.double() / T_q, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _ce(logits, targets, T=1.0):
    V = logits.shape[-1]
    return F.cross_entropy(logits.double().reshape(-1, V) / T, targets.reshape(-1), reduction="none").view(
        targets.shape)


def _mean(values, mask):
    if mask is None:
        return values.mean()
    mask = mask.double()
    return (values * mask).sum() / mask.sum()


def _distill(s, t, targets, mask, T, alpha, *, scale="T^2", direction="forward", t_temp=True, s_temp=True,
             kl_reduce="masked", ce_mask=True, swap_alpha=False, ce_temp=False, soft_ce=False):
    """The distillation loss, or one of its typical mistakes (keyword switches); float64.

    ``kl_reduce``: "masked" (the mean over the masked positions), "all" (over every position),
    "vocab mean" (masked, but the KL averaged over the vocabulary), "batchmean" and "batchmean masked"
    (F.kl_div's reduction="batchmean": the sum divided by the batch size B), "elementwise" (F.kl_div's
    reduction="mean": over every one of the B * T * V terms).
    """
    T_t, T_s = (T if t_temp else 1.0), (T if s_temp else 1.0)
    kl = _kl(t, s, T_t, T_s) if direction == "forward" else _kl(s, t, T_s, T_t)  # (B, T)
    if soft_ce:  # cross-entropy against the soft targets: KL plus the teacher's entropy
        log_p = torch.log_softmax(t.double() / T, -1)
        kl = kl - (log_p.exp() * log_p).sum(-1)
    B, V = s.shape[0], s.shape[-1]
    soft = {"masked": lambda: _mean(kl, mask), "all": lambda: kl.mean(), "vocab mean": lambda: _mean(kl, mask) / V,
            "batchmean": lambda: kl.sum() / B, "batchmean masked": lambda: (kl * mask.double()).sum() / B,
            "elementwise": lambda: kl.mean() / V}[kl_reduce]()
    factor = {"T^2": T**2, "T": T, "1": 1.0}[scale]
    hard = _mean(_ce(s, targets, T if ce_temp else 1.0), mask if ce_mask else None)
    soft = factor * soft
    a = 1.0 - alpha if swap_alpha else alpha
    return a * hard + (1.0 - a) * soft


def reference_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                           mask: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """Hinton et al.'s loss, as :func:`mlakit.losses.distill_loss`: a scalar tensor.

    alpha * CE(student, targets) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)),
    each term averaged over the positions where ``mask`` (B, T) is 1; logits (B, T, V), targets (B, T).
    The cross-entropy is at temperature 1; the teacher is detached (no gradient reaches it).
    """
    return distill_loss(student_logits, teacher_logits, targets, mask, temperature, alpha)


_DISTILL_MISTAKES = [
    (dict(scale="1"), "the KL term is not multiplied by T^2. Hint: the soft targets' gradients shrink as 1 / T^2; "
                      "Hinton et al. multiply the KL by T^2 so that changing T does not change its weight"),
    (dict(scale="T"), "the KL term is multiplied by T, not T^2. Hint: (1 - alpha) * T**2 * KL"),
    (dict(direction="reverse"), "the KL is reversed: KL(student || teacher). Hint: the teacher's distribution is "
                                "the target, KL(p_teacher || p_student) = sum p_t * (log p_t - log p_s)"),
    (dict(direction="reverse", scale="1"), "the KL is reversed and not multiplied by T^2. Hint: (1 - alpha) * T**2 * "
                                           "sum p_t * (log p_t - log p_s)"),
    (dict(t_temp=False), "the teacher's logits are not divided by T. Hint: soften both distributions, "
                         "softmax(teacher_logits / T) and log_softmax(student_logits / T)"),
    (dict(s_temp=False), "the student's logits are not divided by T. Hint: soften both distributions, "
                         "softmax(teacher_logits / T) and log_softmax(student_logits / T)"),
    (dict(t_temp=False, s_temp=False), "neither distribution is softened by T (only the T^2 factor is there). Hint: "
                                       "divide both logits by T inside the softmaxes"),
    (dict(kl_reduce="all", ce_mask=False), "every position counts, the prompt and the padding too. Hint: average "
                                           "both terms over the masked positions only: (x * mask).sum() / mask.sum()"),
    (dict(kl_reduce="all"), "the KL term is averaged over every position, the prompt and the padding too. Hint: "
                            "average it over the masked positions, as the cross-entropy"),
    (dict(kl_reduce="batchmean"), "the KL is summed over every position and divided by the batch size (F.kl_div's "
                                  "reduction='batchmean'). Hint: take the KL per position, .sum(-1) over the "
                                  "vocabulary, then average over the masked positions"),
    (dict(kl_reduce="batchmean masked"), "the masked KL is divided by the batch size (F.kl_div's "
                                         "reduction='batchmean'), not by the number of masked positions. Hint: "
                                         "(kl * mask).sum() / mask.sum()"),
    (dict(kl_reduce="elementwise"), "the KL is averaged over every element, vocabulary included (F.kl_div's "
                                    "reduction='mean'). Hint: sum over the vocabulary, then average over the "
                                    "masked positions"),
    (dict(ce_mask=False), "the cross-entropy is averaged over every position, the prompt and the padding too. Hint: "
                          "average it over the masked positions, as the KL"),
    (dict(swap_alpha=True), "alpha weighs the KL term instead of the cross-entropy. Hint: alpha * CE + (1 - alpha) "
                            "* T^2 * KL (alpha = 1 is plain SFT)"),
    (dict(ce_temp=True), "the cross-entropy against the targets uses the softened logits. Hint: the hard targets "
                         "are learned at temperature 1: cross_entropy(student_logits, targets)"),
    (dict(kl_reduce="vocab mean"), "the KL is averaged over the vocabulary instead of summed. Hint: KL is a sum over the V "
                         "tokens of one distribution, .sum(-1), then a mean over the positions"),
    (dict(soft_ce=True), "that is the cross-entropy against the soft targets: the KL plus the teacher's entropy, "
                         "with the same gradient but not 0 when the student equals the teacher. Hint: subtract "
                         "the teacher's own log-probabilities, sum p_t * (log p_t - log p_s)"),
]


def _distill_cases():
    g = torch.Generator().manual_seed(92)
    B, T, V = 3, 7, 11
    cases = []
    for temperature, alpha, scale in ((2.0, 0.3, 2.0), (3.0, 0.6, 1.0), (1.0, 0.5, 1.5), (2.0, 0.0, 1.0)):
        s = torch.randn(B, T, V, generator=g) * scale
        t = torch.randn(B, T, V, generator=g) * 2.0
        targets = torch.randint(0, V, (B, T), generator=g)
        mask = torch.zeros(B, T)
        for row, (a, b) in enumerate([(2, 6), (4, 7), (1, 3)]):
            mask[row, a:b] = 1.0
        cases.append((s, t, targets, mask, temperature, alpha))
    return cases


@checker("09.2", "distill_loss")
def check_distill_loss(distill_loss: Answer) -> str:
    """Exercise 09.2: distill_loss(student_logits, teacher_logits, targets, mask, temperature, alpha) -> a scalar."""

    cases = _distill_cases()
    for s, t, targets, mask, temperature, alpha in cases:
        where = f"at T = {temperature:g}, alpha = {alpha:g}"
        want = reference_distill_loss(s, t, targets, mask, temperature, alpha)
        student = s.clone().requires_grad_(True)
        teacher = t.clone().requires_grad_(True)
        got = distill_loss(student, teacher, targets, mask, temperature, alpha)
        if not isinstance(got, torch.Tensor):
            raise _Fail(f"return a scalar torch.Tensor (so it can be backpropagated), got {type(got).__name__}")
        if got.numel() != 1:
            raise _Fail(f"the loss has shape {tuple(got.shape)}; expected a scalar. Hint: average each term over the "
                        "masked positions into one number")
        got = got.reshape(())
        if not _close(got, want):
            prefix = f"{where} your loss is {got.item():.4f}; expected {want.item():.4f}: "
            with torch.no_grad():
                wrong = [(_distill(s, t, targets, mask, temperature, alpha, **switches), hint)
                         for switches, hint in _DISTILL_MISTAKES]
            diagnose(got.detach().double(), wrong, same=lambda a, b: _close(a, b.to(torch.float64)), prefix=prefix)
            raise _Fail(f"{where} your loss is {got.item():.4f}; expected {want.item():.4f}. Hint: alpha * "
                        "CE(student, targets) + (1 - alpha) * T**2 * KL(softmax(t / T) || softmax(s / T)), both "
                        "averaged over the masked positions")
        if not got.requires_grad:
            raise _Fail("the loss carries no gradient back to the student's logits (.item(), .detach() or "
                        "torch.no_grad inside?). Hint: compute it with torch operations on student_logits")
        got.backward()
        if teacher.grad is not None and teacher.grad.abs().sum() > 0:
            raise _Fail("the teacher's logits receive a gradient: training would move the teacher too. Hint: "
                        "teacher_logits.detach() before the softmax: the teacher is a fixed target")
        if student.grad is None or student.grad.abs().sum() == 0:
            raise _Fail("the loss carries no gradient back to the student's logits. Hint: compute it with torch "
                        "operations on student_logits")
    return (f"matches mlakit.losses.distill_loss on {len(cases)} batches: T^2, KL(teacher || student) at "
            "temperature T, masked means, teacher detached")


# ---------------------------------------------------------------- 09.3
def reference_render_example(prompt: str, reasoning: str, answer: str) -> str:
    """The whole training text of one example in R1's format, special tokens written out:

    ``<bos>{prompt}<think>{reasoning}</think><answer>{answer}</answer><eos>``, which is
    ``to_text(*render(prompt, answer, reasoning))`` of :mod:`mlakit.data.template`.
    """
    return to_text(*render(prompt, answer, reasoning))


def _render(prompt, reasoning, answer, *, bos=True, eos=True, think=True, answer_tags=True, order="think first",
            closing="/", sep="", empty_think=True):
    think_block = f"{THINK_OPEN}{reasoning}{THINK_OPEN if closing == '' else THINK_CLOSE}" if think else reasoning
    if not reasoning and not empty_think:
        think_block = ""
    answer_block = (f"{ANSWER_OPEN}{answer}{ANSWER_OPEN if closing == '' else ANSWER_CLOSE}" if answer_tags
                    else answer)
    blocks = [think_block, answer_block] if order == "think first" else [answer_block, think_block]
    body = sep.join(blocks)
    if order == "eos inside":
        body = f"{think_block}{answer_block[:-len(ANSWER_CLOSE)]}{EOS}{ANSWER_CLOSE}"
        eos = False
    return (BOS if bos else "") + prompt + sep + body + (EOS if eos else "")


_RENDER_MISTAKES = [
    (dict(eos=False), "the <eos> at the end is missing: a model trained on it never learns to stop. Hint: end the "
                      "text with <eos>"),
    (dict(bos=False), "the <bos> at the start is missing. Hint: begin with <bos>, as every example the model reads"),
    (dict(bos=False, eos=False), "<bos> and <eos> are missing. Hint: <bos> first, <eos> last"),
    (dict(order="answer first"), "the answer block comes before the think block: the model would answer before "
                                 "it reasons. Hint: <think>...</think> first, then <answer>...</answer>"),
    (dict(closing=""), "the closing tags have no slash (<think>...<think>). Hint: close with </think> and "
                       "</answer>"),
    (dict(empty_think=False), "an empty reasoning leaves out the think block. Hint: write <think></think> even "
                              "when the reasoning is empty: the format always has one think block"),
    (dict(think=False), "the reasoning is not inside <think>...</think>. Hint: R1's format reward wants the "
                        "reasoning between <think> and </think>"),
    (dict(answer_tags=False), "the answer is not inside <answer>...</answer>. Hint: the verifier reads the answer "
                              "between <answer> and </answer>"),
    (dict(sep=" "), "there are spaces between the parts. Hint: the template has none: every character is a token "
                    "the model must learn to write"),
    (dict(sep="\n"), "there are newlines between the parts. Hint: the template has none: every character is a "
                     "token the model must learn to write"),
    (dict(order="eos inside"), "the <eos> is inside the answer block. Hint: <eos> comes last, after </answer>"),
]

_RENDER_CASES = [("123+456=", "3+6=9,2+5=7,1+4=5", "579"), ("7+5=", "7+5=12", "12"), ("make 8 with 2 4:", "", "2*4"),
                 ("96+8=", "6+8=14,9+1=10", "104")]


@checker("09.3", "render_example")
def check_render_example(render_example: Answer) -> str:
    """Exercise 09.3: render_example(prompt, reasoning, answer) -> the training text with its special tokens."""

    for prompt, reasoning, answer in _RENDER_CASES:
        want = reference_render_example(prompt, reasoning, answer)
        got = render_example(prompt, reasoning, answer)
        if isinstance(got, (tuple, list)):
            raise _Fail(f"return one string, the whole sequence; got a {type(got).__name__} of {len(got)} items. "
                        "Hint: join the prompt and the completion, with <bos> first and <eos> last")
        if not isinstance(got, str):
            raise _Fail(f"return a string, got {type(got).__name__}")
        if got == want:
            continue
        where = f"for ({prompt!r}, {reasoning!r}, {answer!r}): "
        diagnose(got, [(_render(prompt, reasoning, answer, **switches), hint) for switches, hint in _RENDER_MISTAKES],
                 same=lambda a, b: a == b, prefix=where)
        i = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
        raise _Fail(f"{where}your text {got!r} differs from the template from character {i} on "
                    f"({got[i:i + 12]!r} where {want[i:i + 12]!r} is expected). Hint: <bos>, the prompt, "
                    "<think>reasoning</think>, <answer>answer</answer>, <eos>, with nothing in between")
    return (f"right on {len(_RENDER_CASES)} examples: <bos> prompt <think>...</think><answer>...</answer> <eos>, an "
            "empty reasoning included")


__all__ = ["reference_sft_loss_mask", "check_sft_loss_mask", "reference_distill_loss", "check_distill_loss",
           "reference_render_example", "check_render_example"]
