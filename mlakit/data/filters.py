"""Record filters: length, format, verifier. Each is a named predicate; the pipeline counts what each drops.

R1's SFT data went through filters after the verifier (R1 §2.3.3: mixed
languages, long paragraphs, code blocks were dropped). Here:

- :func:`length_filter`: prompt + completion within a character budget, or
  within a token budget of a tokenizer (what fits the model's context);
- :func:`format_filter`: the completion reads in R1's format (a think block
  then one answer block, :func:`~mlakit.data.reasoning.format_ok`), or, with
  ``reasoning=False``, in the plain format (no tags at all);
- :func:`verifier_filter`: the task's strict verifier accepts the completion
  (needs records built in this session, which hold their problem).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .reasoning import format_ok, parse_completion
from .records import Record


@dataclass(frozen=True)
class Filter:
    name: str
    keep: Callable[[Record], bool]

    def __call__(self, record: Record) -> bool:
        return bool(self.keep(record))


def length_filter(max_chars: int | None = None, min_chars: int = 0, tokenizer=None,
                  max_tokens: int | None = None) -> Filter:
    """Keep records whose prompt + completion has min_chars..max_chars characters and, with a
    tokenizer, at most ``max_tokens`` tokens counting <bos> and <eos>."""
    if max_tokens is not None and tokenizer is None:
        raise ValueError("max_tokens needs a tokenizer to count tokens with")
    if max_chars is not None and max_chars < min_chars:
        raise ValueError(f"max_chars={max_chars} is invalid: must be >= min_chars={min_chars}")

    def keep(r: Record) -> bool:
        chars = len(r.prompt) + len(r.completion)
        if chars < min_chars or (max_chars is not None and chars > max_chars):
            return False
        if max_tokens is not None:
            return len(tokenizer.encode(r.prompt + r.completion, bos=True, eos=True)) <= max_tokens
        return True

    return Filter("length", keep)


def format_filter(reasoning: bool = True) -> Filter:
    """Keep completions in R1's think-then-answer format (or, reasoning=False, without any tag)."""
    if reasoning:
        return Filter("format", lambda r: format_ok(r.completion))
    return Filter("format", lambda r: parse_completion(r.completion).plain)


def verifier_filter(task) -> Filter:
    """Keep records whose completion the task's verifier accepts."""

    def keep(r: Record) -> bool:
        if r.problem is None:
            raise ValueError(f"record {r.id} holds no problem (read from a file?): the verifier filter "
                             "runs on records built by build_dataset in this session")
        return task.verify(r.problem, r.completion)

    return Filter("verifier", keep)


def apply_filters(records: Sequence[Record], filters: Sequence[Filter]) -> tuple[list[Record], dict[str, int]]:
    """(records every filter keeps, {filter name: records it dropped}); each record is charged to the
    first filter that drops it."""
    dropped = {f.name: 0 for f in filters}
    kept = []
    for r in records:
        for f in filters:
            if not f(r):
                dropped[f.name] += 1
                break
        else:
            kept.append(r)
    return kept, dropped


__all__ = ["Filter", "length_filter", "format_filter", "verifier_filter", "apply_filters"]
