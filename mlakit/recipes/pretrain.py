"""Pretraining on the course's synthetic additions: data, splits, model, trainer, evaluation.

The recipe of lesson 07 and ``mlakit train``, in one place:

1. problems from :class:`~mlakit.data.AdditionTask` (every pair for operands of up
   to 2 digits, a seeded sample beyond), dealt into leak-free train / validation /
   test splits (:func:`~mlakit.data.make_splits`);
2. ``<bos> prompt completion <eos>`` examples, random batches that are a pure
   function of the step (:class:`~mlakit.data.LMBatches`), loss on the completion;
3. a freshly seeded :class:`~mlakit.model.MiniDeepSeek`, trained by
   :class:`~mlakit.train.Trainer` on DeepSeek-V3's loss (next token + MTP + balance,
   :func:`mlakit.losses.pretrain_loss`) with the auxiliary-loss-free bias update;
4. greedy exact match on validation problems during training, and on the test split
   at the end when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..config import ModelConfig
from ..data import AdditionTask, LMBatches, Problem, encode_problems, make_splits
from ..model import MiniDeepSeek
from ..tokenizer import CharTokenizer
from ..train import TrainConfig, Trainer, exact_match
from ..utils import seed_everything

ALL_PAIRS_UP_TO_DIGITS = 2  # up to 2-digit operands every pair is used (10,000 problems); beyond, a sample
SAMPLED_PROBLEMS = 20_000  # problems drawn when there are too many pairs to enumerate
EVAL_PROBLEMS = 200  # validation problems decoded at each evaluation


def addition_splits(digits: int = 2, seed: int = 0) -> tuple[AdditionTask, dict[str, list[Problem]]]:
    """The task (operands of 1 to ``digits`` digits) and its train / validation / test splits."""
    task = AdditionTask(1, digits)
    problems = task.all_problems() if digits <= ALL_PAIRS_UP_TO_DIGITS else list(task.generate(SAMPLED_PROBLEMS, seed=seed))
    return task, make_splits(problems, seed=seed)


EVAL_NEW_TOKENS = 32  # greedy decoding budget per evaluation problem (stops earlier at eos)


def exact_match_eval(tokenizer: CharTokenizer, problems: list[Problem], verify,
                     n: int = EVAL_PROBLEMS) -> Callable[[nn.Module], dict]:
    """An ``eval_fn`` for the Trainer: greedy exact match on the first ``n`` problems.

    Up to :data:`EVAL_NEW_TOKENS` new tokens per problem, fewer when the model's
    context (``max_position_embeddings``) ends sooner after the longest prompt.
    """
    chosen = problems[:n]
    longest_prompt = max((len(tokenizer.encode(p.prompt, bos=True)) for p in chosen), default=0)

    def evaluate(model: nn.Module) -> dict:
        budget = min(EVAL_NEW_TOKENS, model.config.max_position_embeddings - longest_prompt)
        return {"exact_match": exact_match(model, tokenizer, chosen, verify, max_new_tokens=budget)["exact_match"]}

    return evaluate


@dataclass
class PretrainRun:
    """What :func:`pretrain` built and trained."""

    trainer: Trainer
    tokenizer: CharTokenizer
    task: AdditionTask
    splits: dict[str, list[Problem]] = field(repr=False)
    batches: LMBatches = field(repr=False)

    @property
    def model(self) -> MiniDeepSeek:
        return self.trainer.model

    def test_exact_match(self) -> dict:
        """Greedy exact match on the whole test split (never used for training or model selection)."""
        return exact_match(self.model, self.tokenizer, self.splits["test"], self.task.verify)


def pretrain(config: ModelConfig, train_config: TrainConfig, tokenizer: CharTokenizer | None = None,
             digits: int = 2, batch_size: int = 64, seed: int = 0, task: AdditionTask | None = None,
             splits: dict[str, list[Problem]] | None = None, eval_problems: int = EVAL_PROBLEMS,
             desc: str = "pretraining", trainer_cls: type[Trainer] = Trainer) -> PretrainRun:
    """Build the data and a freshly seeded model, train it; returns the :class:`PretrainRun`.

    ``task`` and ``splits`` default to :func:`addition_splits` (``digits``, ``seed``);
    pass them to train on splits you already hold. The model is built right after
    ``seed_everything(seed)``, so a run depends on nothing that ran before it.
    ``trainer_cls`` is the Trainer or a subclass taking its arguments
    (:class:`mlakit.distributed.DataParallelTrainer` under torchrun).
    """
    tokenizer = tokenizer or CharTokenizer()
    if (task is None) != (splits is None):
        raise ValueError("pretrain takes task and splits together (or neither, to build both)")
    if task is None:
        task, splits = addition_splits(digits, seed)
    batches = LMBatches(encode_problems(splits["train"], tokenizer), batch_size, tokenizer.pad_id, seed=seed)
    seed_everything(seed)
    model = MiniDeepSeek(config)
    trainer = trainer_cls(model, train_config, batches, exact_match_eval(tokenizer, splits["validation"], task.verify,
                                                                      eval_problems))
    trainer.train(desc=desc)
    return PretrainRun(trainer, tokenizer, task, splits, batches)


__all__ = ["addition_splits", "exact_match_eval", "PretrainRun", "pretrain"]
