"""build_dataset: generate (or teacher-sample), verify, dedup, decontaminate, filter; records + a data card.

The stages, in order, each counted on the :class:`~mlakit.data.card.DataCard`:

1. generate: ``n`` problems from the task, seeded; each gets the generator's
   reference completion (plain, or R1's think/answer with ``reasoning=True``),
   or, with a :class:`Teacher`, ``samples`` completions sampled from a model
   (:func:`~mlakit.data.teacher.rejection_sample`);
2. verify: the task's strict verifier drops wrong or unfinished completions
   (a generator's own completions all pass: a failure here is a generator bug);
3. exact dedup on the normalised prompt + completion, and at most
   ``per_key`` records per canonical problem key (None keeps every distinct
   correct completion of a problem: rejection sampling's "all");
4. near dedup of the prompts (MinHash + LSH + exact Jaccard,
   :func:`~mlakit.data.dedup.near_dedup`): a question worded almost like an
   earlier one goes, with its completions. Completions are left out of it: two
   sums a digit apart have nearly the same worked steps, yet are different
   problems; and the samples of one prompt are the exact-dedup stage's business;
5. decontamination against ``eval_items`` (problems or records: their prompts
   by n-grams and their keys, :func:`~mlakit.data.decontam.decontaminate`);
6. filters (:mod:`~mlakit.data.filters`), each dropping what it rejects.

Every stage is deterministic, so a seed gives the same records, ids and card.
An empty result is an :class:`EmptyDatasetError` whose message shows the card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..utils import progress as progress_bar
from ..utils import progress_enabled
from .card import DataCard
from .decontam import decontaminate
from .dedup import exact_dedup, near_dedup
from .filters import Filter, apply_filters
from .records import Record
from .task import Task, check_int, key_string
from .teacher import rejection_sample
from .text import normalize_text


class EmptyDatasetError(ValueError):
    """No record survived the pipeline; ``.card`` says where they went."""

    def __init__(self, card: DataCard):
        self.card = card
        super().__init__(f"no records left after the pipeline ({card.one_line()})\n{card.format()}")


@dataclass
class Teacher:
    """A model that writes the completions, with its sampling settings."""

    model: nn.Module
    tokenizer: Any
    samples: int = 4  # completions sampled per prompt (the group of one grouped generation)
    temperature: float = 1.0
    max_new_tokens: int = 64
    top_k: int | None = None
    top_p: float | None = None
    batch_size: int = 32  # prompts per generation call
    use_cache: bool = True  # False for a model without a KV cache (every step reruns the sequence)


@dataclass
class Dataset:
    records: list[Record]
    card: DataCard
    rejection: Any = field(default=None, repr=False)  # the RejectionResult of a teacher, if any


def _eval_view(items: Sequence) -> tuple[list[str], list[str]]:
    texts, keys = [], []
    for item in items:
        if isinstance(item, Record):
            texts.append(item.prompt)
            keys.append(item.meta.get("key", ""))
        elif isinstance(item, str):
            texts.append(item)
            keys.append("")  # no key: n-grams only
        else:
            texts.append(item.prompt)
            keys.append(key_string(item.key))
    return texts, keys


def build_dataset(task: Task, n: int, seed: int = 0, reasoning: bool = False, teacher: Teacher | None = None,
                  eval_items: Sequence | None = None, per_key: int | None = 1, near_threshold: float = 0.8,
                  near_n: int = 5, near_unit: str = "word", num_perm: int = 128, decontam_n: int = 13,
                  decontam_unit: str = "word", filters: Sequence[Filter] = (),
                  progress: bool | None = None) -> Dataset:
    """Run the pipeline (see the module docstring) and return the kept records and their data card."""
    check_int("n", n, 1, 10**8)
    show = progress_enabled() if progress is None else progress
    card = DataCard(task.name, task.knobs(), seed, "teacher" if teacher else "generator",
                    settings={"reasoning": reasoning, "per_key": per_key, "near_threshold": near_threshold,
                              "near_shingles": f"{near_unit} {near_n}-grams of prompts", "num_perm": num_perm,
                              "decontamination": f"{decontam_unit} {decontam_n}-grams + keys"})
    problems = list(progress_bar(task.generate(n, seed=seed), total=n, desc="generate", disable=not show))
    rejection = None
    if teacher is None:  # (problem, completion, sample index, verified)
        candidates = [(p, task.reference_completion(p, reasoning), 0, None) for p in problems]
    else:
        rejection = rejection_sample(teacher.model, teacher.tokenizer, task, problems, teacher.samples,
                                     teacher.temperature, teacher.max_new_tokens, mode="all",
                                     batch_size=teacher.batch_size, top_k=teacher.top_k, top_p=teacher.top_p,
                                     seed=seed, use_cache=teacher.use_cache, progress=show)
        candidates = [(s.problem, s.completion, s.index, s.correct) for s in rejection.samples]
        card.teacher = {"temperature": teacher.temperature, **rejection.report()}
    card.generated = len(candidates)
    source = card.source
    records = []
    for i, (p, completion, j, ok) in enumerate(candidates):
        if not (task.verify(p, completion) if ok is None else ok):
            card.failed_verification += 1
            continue
        meta = {"key": key_string(p.key), "difficulty": task.difficulty(p), "seed": seed}
        if teacher is not None:
            meta["sample"] = j
        records.append(Record(f"{task.name}-{seed}-{i:07d}", task.name, p.prompt, completion, p.answer,
                              source, meta, problem=p))
    texts = [normalize_text(r.prompt) + "\n" + normalize_text(r.completion) for r in records]
    exact = exact_dedup(texts, [r.meta["key"] for r in records], per_key=per_key)
    card.exact_duplicates = exact.removed
    records = [records[i] for i in exact.keep]
    if records:  # near dedup of the questions: distinct prompts, so the samples of one prompt stay
        prompts = list(dict.fromkeys(r.prompt for r in records))
        near = near_dedup(prompts, near_threshold, num_perm, near_n, near_unit, progress=show)
        dropped = {prompts[i] for i in near.duplicate_of}
        card.near_duplicates = sum(r.prompt in dropped for r in records)
        records = [r for r in records if r.prompt not in dropped]
    if eval_items and records:
        eval_texts, eval_keys = _eval_view(eval_items)
        found = decontaminate([r.prompt + " " + r.completion for r in records], eval_texts, decontam_n,
                              decontam_unit, [r.meta["key"] for r in records], eval_keys)
        card.contaminated = len(found)
        bad = set(found.indices)
        records = [r for i, r in enumerate(records) if i not in bad]
    records, card.filtered = apply_filters(records, filters)
    card.kept = len(records)
    card.check()
    if not records:
        raise EmptyDatasetError(card)
    return Dataset(records, card, rejection)


__all__ = ["Teacher", "Dataset", "EmptyDatasetError", "build_dataset"]
