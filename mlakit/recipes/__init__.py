"""Training recipes: one short function per stage over the shared Trainer, used by the CLI and the lessons.

``pretrain`` is the course's pretraining run (lesson 07, ``mlakit train``). SFT,
distillation and GRPO recipes sit beside it as they are built, each composing the
same pieces: data from :mod:`mlakit.data`, a model, losses from :mod:`mlakit.losses`
and :class:`mlakit.train.Trainer`.
"""

from .pretrain import PretrainRun, addition_splits, exact_match_eval, pretrain

__all__ = ["PretrainRun", "addition_splits", "exact_match_eval", "pretrain"]
