"""Supervised fine-tuning and distillation: the same Trainer, a completion-only loss, a teacher or none.

R1's recipe after RL is supervised (R1 §2.3.3): sample the RL checkpoint, keep
the completions a verifier accepts (rejection sampling, about 600k reasoning
samples), and fine-tune on them. Its distilled models are that step alone, on
smaller students (§2.4): sequence-level distillation (Kim and Rush 2016), the
student trained on the teacher's outputs, no logits and no RL. Both are
:func:`sft` here:

1. records from :mod:`mlakit.data` (:class:`~mlakit.data.Record` objects, a JSONL
   path, a :class:`~mlakit.data.Dataset`, or a teacher's
   :class:`~mlakit.data.RejectionResult` through :func:`records_from_rejection`);
2. the template of :mod:`mlakit.data.template`: ``<bos> prompt completion <eos>``,
   the completion plain or ``<think>...</think><answer>...</answer>``; random
   batches, a pure function of the step (:class:`~mlakit.data.LMBatches`), whose
   ``loss_mask`` counts the completion and its eos only;
3. :class:`~mlakit.train.Trainer` with pretraining's loss
   (:func:`mlakit.losses.pretrain_loss`: next token, MTP, balance, all under the
   mask), its checkpoints, metrics, progress bar and exact resume;
4. greedy exact match of the verified answer on held-out records.

:func:`distill` is logit-level distillation (Hinton et al. 2015) through the same
path: the loss is :func:`mlakit.losses.distill_loss_fn` over a frozen teacher's
logits, alpha * CE + (1 - alpha) * T^2 * KL. It needs teacher and student to share
one vocabulary, token for token. Sequence-level data with the logit loss is
:func:`distill` on the teacher's records. On a fixed data set the teacher's logits
can be computed once and looked up (:class:`TeacherLogits`, ``cache_teacher_logits=True``):
offline distillation, one teacher pass per sequence instead of one per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..data import (
    Dataset,
    LMBatches,
    Record,
    RejectionResult,
    encode_records,
    key_string,
    read_jsonl,
    strict_answer,
)
from ..losses import DISTILL_ALPHA, DISTILL_TEMPERATURE, LossOutput, distill_loss_fn, pretrain_loss
from ..model import MiniDeepSeek
from ..tokenizer import CharTokenizer
from ..train import TrainConfig, Trainer, exact_match, load_model_from_checkpoint
from ..utils import seed_everything
from .pretrain import EVAL_PROBLEMS

SFT_BATCH_SIZE = 32  # examples per step: small models, short sequences
EVAL_NEW_TOKENS = 64  # greedy budget per evaluation record (reasoning completions run longer than answers)

Records = Sequence[Record] | str | Path | Dataset | RejectionResult


# ------------------------------------------------------------------------ data
def records_from_rejection(result: RejectionResult, task=None, seed: int = 0) -> list[Record]:
    """SFT records from a teacher's rejection sampling: the kept (verified) samples, in order.

    Sequence-level distillation's data (R1 §2.3.3 and §2.4; Kim and Rush 2016). Each record
    has source "teacher" and meta {key, difficulty, sample}, as ``build_dataset`` writes them;
    ``task`` names the records (its ``.name``). For dedup, decontamination and a data card
    use :func:`mlakit.data.build_dataset` with a :class:`~mlakit.data.Teacher` instead.
    """
    if not result.kept:
        raise ValueError(f"the rejection sampling kept no sample (acceptance {result.acceptance_rate:.1%} of "
                         f"{len(result.samples)} samples): sample more (num_samples, temperature) or use a "
                         f"stronger teacher")
    name = getattr(task, "name", "teacher")
    position = {id(s): i for i, s in enumerate(result.samples)}  # prompt-major: sample i is of problem i // G
    records = []
    for n, s in enumerate(result.kept):
        p = s.problem
        meta: dict[str, Any] = {"sample": s.index, "seed": seed}
        if hasattr(p, "key"):
            meta["key"] = key_string(p.key)
        if id(s) in position:
            meta["difficulty"] = result.difficulties[position[id(s)] // result.num_samples]
        records.append(Record(f"{name}-teacher-{seed}-{n:07d}", name, p.prompt, s.completion, str(p.answer),
                              "teacher", meta, problem=p))
    return records


def as_records(data: Records, task=None) -> list[Record]:
    """Records from a list (Record objects or dicts), a JSONL path, a Dataset or a RejectionResult."""
    if isinstance(data, (str, Path)):
        out = read_jsonl(data)
    elif isinstance(data, RejectionResult):
        out = records_from_rejection(data, task)
    elif isinstance(data, Dataset):
        out = list(data.records)
    else:
        out = []
        for i, r in enumerate(data):
            if isinstance(r, dict):
                try:
                    r = Record.from_dict(r)
                except ValueError as e:
                    raise ValueError(f"record #{i}: {e}") from None
            out.append(r)
    if not out:
        raise ValueError("no records: SFT needs at least one")
    return out


# ------------------------------------------------------------------ evaluation
def answer_verifier(task=None) -> Callable[[Record, str], bool]:
    """``verify(record, completion)``: the task's strict verifier on the record's problem when
    both are at hand, else the strict reader's answer equal to the record's reference answer.

    Records read back from JSONL carry no problem object, so they get the second reading:
    right for R1's format and plain answers, too strict where a task accepts several
    answers (countdown) or a plain completion with worked steps ("[7+5=12]12"): keep the
    records in memory (``record.problem``) and pass ``task`` for those.
    """

    def verify(record: Record, completion: str) -> bool:
        problem = getattr(record, "problem", None)
        if task is not None and problem is not None:
            return bool(task.verify(problem, completion))
        return strict_answer(completion) == record.answer

    return verify


def sft_eval(tokenizer: CharTokenizer, records: Records, task=None, n: int = EVAL_PROBLEMS,
             max_new_tokens: int = EVAL_NEW_TOKENS) -> Callable[[nn.Module], dict]:
    """An ``eval_fn`` for the Trainer: greedy exact match of the verified answer on the first ``n``
    records (tags written out, so R1's format is read as the verifier reads it)."""
    chosen = as_records(records, task)[:n]

    def evaluate(model: nn.Module) -> dict:
        return {"exact_match": _exact_match(model, tokenizer, chosen, task, max_new_tokens)["exact_match"]}

    return evaluate


def _exact_match(model: nn.Module, tokenizer: CharTokenizer, records: list[Record], task,
                 max_new_tokens: int) -> dict:
    """:func:`mlakit.train.exact_match` of ``records`` with tags written out; up to ``max_new_tokens``
    new tokens, fewer when the model's context ends sooner after the longest prompt."""
    longest_prompt = max(len(tokenizer.encode(r.prompt, bos=True)) for r in records)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    budget = max_new_tokens if limit is None else min(max_new_tokens, limit - longest_prompt)
    return exact_match(model, tokenizer, records, answer_verifier(task), max_new_tokens=budget, skip_special=False)


# ------------------------------------------------------- offline teacher logits
class TeacherLogits(nn.Module):
    """A frozen teacher's logits on a fixed set of examples, computed once and looked up (offline distillation).

    Logit distillation on a fixed data set runs the same teacher on the same sequences every
    time an example is drawn. This module runs it once per distinct example (``examples``:
    (ids of ``<bos> prompt completion <eos>``, prompt length), as :func:`~mlakit.data.encode_records`
    gives them) and, called on a right-padded batch of ``input_ids`` (B, T), returns the stored
    logits (B, T, vocab): row by row, looked up by its tokens up to the padding (and the final
    ``<eos>``, which the model reads but whose next token is padding). A row it has not seen goes
    through the teacher. Positions past a row's example get zeros: padding, which the loss mask
    leaves out. The numbers are the teacher's own up to float rounding (the causal model gives
    each position the same logits whatever follows it in the batch).

    Storage is the price: one float per vocabulary entry per token, 58 per character here,
    about 129k per token at DeepSeek-V3's vocabulary, which is why large-scale pipelines keep
    only the top-k logits of each position.
    """

    def __init__(self, teacher: nn.Module, examples: Sequence[tuple[list[int], int]], pad_id: int,
                 eos_id: int | None = None, batch_size: int = 64):
        super().__init__()
        self.teacher, self.pad_id, self.eos_id = teacher, pad_id, eos_id
        self.config = getattr(teacher, "config", None)
        keys = list(dict.fromkeys(self._key(ids) for ids, _ in examples))  # distinct, in order
        device = next(teacher.parameters()).device
        self.table: dict[tuple[int, ...], torch.Tensor] = {}
        teacher.eval()
        with torch.no_grad():
            for start in range(0, len(keys), batch_size):
                chunk = keys[start:start + batch_size]
                ids = torch.full((len(chunk), max(map(len, chunk))), pad_id, dtype=torch.long)  # (B, T), right-padded
                for row, key in enumerate(chunk):
                    ids[row, :len(key)] = torch.tensor(key)
                out = teacher(ids.to(device))
                logits = getattr(out, "logits", out).float().cpu()  # (B, T, vocab)
                for row, key in enumerate(chunk):
                    self.table[key] = logits[row, :len(key)].clone()  # (len, vocab)

    def _key(self, ids) -> tuple[int, ...]:
        """The tokens the teacher must see for one example: up to its padding and final eos."""
        n = len(ids)
        while n and ids[n - 1] == self.pad_id:
            n -= 1
        if n and self.eos_id is not None and ids[n - 1] == self.eos_id:
            n -= 1
        return tuple(ids[:n])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        vocab = next(iter(self.table.values())).shape[-1] if self.table else None
        rows = input_ids.tolist()
        found = [self.table.get(self._key(row)) for row in rows]
        missing = [r for r, hit in enumerate(found) if hit is None]
        if missing:  # rows outside the table: ask the teacher
            out = self.teacher(input_ids[missing])
            fresh = getattr(out, "logits", out).float()  # (len(missing), T, vocab)
            vocab = fresh.shape[-1]
        logits = torch.zeros(B, T, vocab, device=input_ids.device)  # (B, T, vocab); zeros on the padding
        for r, hit in enumerate(found):
            if hit is not None:
                n = min(T, hit.shape[0])
                logits[r, :n] = hit[:n].to(input_ids.device)
        if missing:
            logits[missing] = fresh.to(logits.device)
        return logits

    def __len__(self) -> int:
        return len(self.table)


# ------------------------------------------------------------------------- run
@dataclass
class SFTRun:
    """What :func:`sft` or :func:`distill` built and trained."""

    trainer: Trainer
    tokenizer: CharTokenizer
    records: list[Record] = field(repr=False)
    batches: LMBatches = field(repr=False)
    teacher: nn.Module | None = field(default=None, repr=False)  # distillation's, else None

    @property
    def model(self) -> MiniDeepSeek:
        return self.trainer.model

    def exact_match(self, records: Records, task=None, max_new_tokens: int = EVAL_NEW_TOKENS) -> dict:
        """Greedy exact match of the verified answer on every one of ``records`` (e.g. the test split)."""
        return _exact_match(self.model, self.tokenizer, as_records(records, task), task, max_new_tokens)


def _model(model_or_config: nn.Module | ModelConfig, seed: int) -> nn.Module:
    if isinstance(model_or_config, ModelConfig):
        seed_everything(seed)  # the run depends on nothing that ran before it
        return MiniDeepSeek(model_or_config)
    if isinstance(model_or_config, nn.Module):
        return model_or_config
    raise TypeError(f"expected a model or a ModelConfig, got {type(model_or_config).__name__}")


def _vocab_size(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "vocab_size", None)


def _check_tokenizer(model: nn.Module, tokenizer: CharTokenizer, role: str) -> None:
    size = _vocab_size(model)
    if size is not None and tokenizer.vocab_size > size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the {role}'s vocab_size is {size}: "
                         f"build the model with ModelConfig(vocab_size={tokenizer.vocab_size}) or more")


def _train(model: nn.Module, loss_fn: Callable[[nn.Module, dict], LossOutput], data: Records,
           tokenizer: CharTokenizer, train_config: TrainConfig, batch_size: int, seed: int,
           eval_fn: Callable[[nn.Module], dict] | None, eval_records: Records | None, task, steps: int | None,
           resume_from: str | Path | None, desc: str, teacher: nn.Module | None = None) -> SFTRun:
    records = as_records(data, task)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    examples = encode_records(records, tokenizer, max_len=limit)
    batches = LMBatches(examples, batch_size, tokenizer.pad_id, seed=seed)  # loss on the completion only
    if eval_fn is None and eval_records is not None:
        eval_fn = sft_eval(tokenizer, eval_records, task)
    trainer = Trainer(model, train_config, batches, eval_fn, loss_fn=loss_fn)
    if resume_from is not None:
        trainer.load(resume_from)
    trainer.train(steps=steps, desc=desc)
    return SFTRun(trainer, tokenizer, records, batches, teacher)


def sft(model_or_config: nn.Module | ModelConfig, records: Records, tokenizer: CharTokenizer,
        train_config: TrainConfig, batch_size: int = SFT_BATCH_SIZE, seed: int = 0,
        eval_fn: Callable[[nn.Module], dict] | None = None, eval_records: Records | None = None, task=None,
        steps: int | None = None, resume_from: str | Path | None = None,
        loss_fn: Callable[[nn.Module, dict], LossOutput] = pretrain_loss, desc: str = "SFT") -> SFTRun:
    """Fine-tune on ``records`` with the loss on the completion only; returns the :class:`SFTRun`.

    ``model_or_config``: a model to fine-tune in place (lesson 07's pretrained one), or a
    ModelConfig for a fresh model built right after ``seed_everything(seed)``. Evaluation:
    ``eval_fn``, or exact match of the verified answer on ``eval_records`` (checked by
    ``task`` when the records hold their problems). ``steps`` stops early, at that step of
    ``train_config``'s schedule; ``resume_from`` continues from a ``run.trainer.save``
    folder, exactly as an uninterrupted run would.
    """
    model = _model(model_or_config, seed)
    _check_tokenizer(model, tokenizer, "model")
    return _train(model, loss_fn, records, tokenizer, train_config, batch_size, seed, eval_fn, eval_records, task,
                  steps, resume_from, desc)


def _check_teacher(student: nn.Module, teacher: nn.Module, tokenizer: CharTokenizer,
                   teacher_tokenizer: CharTokenizer | None) -> None:
    if teacher is student:
        raise ValueError("the teacher is the student: distill from a separate (trained) model")
    s_size, t_size = _vocab_size(student), _vocab_size(teacher)
    if s_size is not None and t_size is not None and s_size != t_size:
        raise ValueError(f"the teacher's vocabulary ({t_size} tokens) differs from the student's ({s_size}): "
                         f"logit distillation compares distributions over the same tokens; give both one "
                         f"vocab_size and tokenizer, or distill at the sequence level (sft on the teacher's "
                         f"records)")
    if teacher_tokenizer is not None and list(teacher_tokenizer.itos) != list(tokenizer.itos):
        a, b = teacher_tokenizer.itos, tokenizer.itos
        i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        t_tok = a[i] if i < len(a) else "nothing"
        s_tok = b[i] if i < len(b) else "nothing"
        raise ValueError(f"the teacher's tokenizer differs from the student's: id {i} is {t_tok!r} for the teacher "
                         f"and {s_tok!r} for the student ({len(a)} and {len(b)} tokens); logit distillation needs "
                         f"one vocabulary, token for token")
    _check_tokenizer(teacher, tokenizer, "teacher")


def distill(student: nn.Module | ModelConfig, teacher: nn.Module | str | Path, records: Records,
            tokenizer: CharTokenizer, train_config: TrainConfig, temperature: float = DISTILL_TEMPERATURE,
            alpha: float = DISTILL_ALPHA, teacher_tokenizer: CharTokenizer | None = None,
            batch_size: int = SFT_BATCH_SIZE, seed: int = 0, eval_fn: Callable[[nn.Module], dict] | None = None,
            eval_records: Records | None = None, task=None, steps: int | None = None,
            resume_from: str | Path | None = None, desc: str = "distillation",
            cache_teacher_logits: bool = False) -> SFTRun:
    """Logit distillation (Hinton et al. 2015) from a frozen ``teacher`` on ``records``; returns the :class:`SFTRun`.

    The student (a model, or a ModelConfig for a fresh seeded one) learns
    alpha * CE(targets) + (1 - alpha) * T^2 * KL(teacher || student) at ``temperature`` T,
    on the completion tokens only (:func:`mlakit.losses.distill_loss`). The teacher (a
    model or a checkpoint folder) runs in eval mode without gradients and is never
    updated. Teacher and student must share one vocabulary (``teacher_tokenizer``, when
    given, is compared token by token). ``cache_teacher_logits``: run the teacher once per
    record before training and look its logits up at every step (:class:`TeacherLogits`),
    the same loss without a teacher forward pass per step. Everything else is :func:`sft`'s.
    """
    if isinstance(teacher, (str, Path)):
        teacher = load_model_from_checkpoint(teacher)
    model = _model(student, seed)
    _check_teacher(model, teacher, tokenizer, teacher_tokenizer)
    _check_tokenizer(model, tokenizer, "student")
    scorer = teacher
    if cache_teacher_logits:
        records = as_records(records, task)
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        scorer = TeacherLogits(teacher, encode_records(records, tokenizer, max_len=limit), tokenizer.pad_id,
                               tokenizer.eos_id)
    loss_fn = distill_loss_fn(scorer, temperature, alpha)  # puts the teacher in eval mode
    return _train(model, loss_fn, records, tokenizer, train_config, batch_size, seed, eval_fn, eval_records, task,
                  steps, resume_from, desc, teacher)


__all__ = ["SFT_BATCH_SIZE", "EVAL_NEW_TOKENS", "SFTRun", "TeacherLogits", "records_from_rejection", "as_records",
           "answer_verifier", "sft_eval", "sft", "distill"]
