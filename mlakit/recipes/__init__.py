"""Training recipes: one short function per stage over the shared Trainer, used by the CLI and the lessons.

``pretrain`` is the course's pretraining run (lesson 07, ``mlakit train``); ``sft``
and ``distill`` fine-tune on records (lesson 09); ``grpo`` is R1-Zero's RL with rule
rewards (lesson 10, ``mlakit grpo``). Each composes the same pieces: data from :mod:`mlakit.data`, a model,
losses from :mod:`mlakit.losses` and :class:`mlakit.train.Trainer`.
"""

from .grpo import GRPORun, grpo, task_problems
from .pretrain import PretrainRun, addition_splits, exact_match_eval, pretrain
from .sft import (
                  SFTRun,
                  TeacherLogits,
                  answer_verifier,
                  as_records,
                  distill,
                  records_from_rejection,
                  sft,
                  sft_eval,
)

__all__ = ["PretrainRun", "addition_splits", "exact_match_eval", "pretrain",
           "SFTRun", "TeacherLogits", "sft", "distill", "sft_eval", "answer_verifier", "as_records", "records_from_rejection",
           "GRPORun", "grpo", "task_problems"]
