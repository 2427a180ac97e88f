"""Synthetic data: task generators with strict verifiers, teacher sampling, dedup, decontamination.

The course makes all of its data: nothing is downloaded. The pipeline of
lesson 08 (R1 §2.3.3, DeepSeekMath §2.1), one concept per module:

- tasks (:mod:`.task`, :mod:`.registry`): ``get_task(name, **knobs)`` gives a
  seeded generator whose problems have ``.prompt``, ``.answer`` and a canonical
  ``.key``, and a strict ``verify(problem, completion)``: ``addition``
  (:mod:`.arithmetic`, lesson 07's pretraining task), ``countdown``,
  ``toolcall``, ``wordproblem``; and, outside that table, :class:`RefusalTask`
  (:mod:`.refusal`, lesson 11's safety run);
- R1's ``<think>...</think><answer>...</answer>`` format read strictly
  (:mod:`.reasoning`), beside the sloppy verifier it replaces;
- teacher sampling with rejection and pass@k (:mod:`.teacher`, :mod:`.passk`);
- exact and near dedup (:mod:`.text`, :mod:`.minhash`, :mod:`.lsh`, :mod:`.dedup`),
  decontamination (:mod:`.decontam`), filters (:mod:`.filters`);
- ``build_dataset`` (:mod:`.pipeline`) running them all, JSONL records
  (:mod:`.records`) and a data card (:mod:`.card`); ``mlakit data`` (:mod:`.cli`).

:func:`make_splits` deals problems into train / validation / test so that no
problem (under its canonical key) is in two splits; :class:`LMBatches` turns
them into language-model batches; :mod:`.template` lays out SFT examples
(``<bos> prompt completion <eos>``, the loss on the completion).
"""

from .arithmetic import AdditionTask, Problem, extract_answer, make_splits
from .card import DataCard, card_path, summarize
from .countdown import CountdownProblem, CountdownTask, ExpressionError, parse_expression
from .decontam import Contamination, decontaminate
from .dedup import DedupResult, exact_dedup, near_dedup
from .filters import Filter, apply_filters, format_filter, length_filter, verifier_filter
from .lm import LMBatches, encode_problems
from .lsh import band_buckets, choose_bands, lsh_candidates, lsh_threshold, s_curve
from .minhash import estimate_jaccard, minhash_sets, minhash_signatures
from .passk import mean_pass_at_k, pass_at_k
from .pipeline import Dataset, EmptyDatasetError, Teacher, build_dataset
from .reasoning import (
    format_ok,
    format_reasoning,
    last_answer,
    parse_completion,
    strict_answer,
    verify_sloppy,
)
from .records import JSONLError, Record, read_jsonl, write_jsonl
from .refusal import REFUSAL, RefusalProblem, RefusalTask
from .registry import get_task, list_tasks, task_knobs
from .task import Task, key_string
from .teacher import RejectionResult, Sample, rejection_sample
from .template import encode_example, encode_records, render, to_text
from .text import jaccard, ngrams, normalize_text, shingles, words
from .toolcall import ToolCallProblem, ToolCallTask
from .wordproblem import WordProblem, WordProblemTask

__all__ = [
    # tasks
    "Task", "get_task", "list_tasks", "task_knobs", "key_string",
    "AdditionTask", "Problem", "extract_answer", "make_splits",
    "CountdownTask", "CountdownProblem", "ExpressionError", "parse_expression",
    "ToolCallTask", "ToolCallProblem", "WordProblemTask", "WordProblem", "RefusalTask", "RefusalProblem", "REFUSAL",
    # the reasoning format
    "format_reasoning", "parse_completion", "strict_answer", "last_answer", "format_ok", "verify_sloppy",
    # teacher sampling
    "rejection_sample", "RejectionResult", "Sample", "pass_at_k", "mean_pass_at_k",
    # dedup and decontamination
    "normalize_text", "words", "ngrams", "shingles", "jaccard",
    "minhash_signatures", "minhash_sets", "estimate_jaccard",
    "s_curve", "lsh_threshold", "choose_bands", "band_buckets", "lsh_candidates",
    "DedupResult", "exact_dedup", "near_dedup", "Contamination", "decontaminate",
    # filters, records, the pipeline
    "Filter", "length_filter", "format_filter", "verifier_filter", "apply_filters",
    "Record", "read_jsonl", "write_jsonl", "JSONLError", "DataCard", "card_path", "summarize",
    "Teacher", "Dataset", "EmptyDatasetError", "build_dataset",
    # language-model batches
    "LMBatches", "encode_problems",
    # the SFT template
    "render", "to_text", "encode_example", "encode_records",
]
