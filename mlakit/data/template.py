"""The chat / reasoning template of SFT: one place that says what the model reads and what it learns.

An SFT example is a prompt and a completion, laid out in tokens as

    <bos> prompt completion <eos>

where the completion is either the plain answer (lesson 07's format) or R1's
reasoning format, ``<think>reasoning</think><answer>answer</answer>``
(:func:`~mlakit.data.reasoning.format_reasoning`: R1-Zero's training template,
R1 §2.2.3, which its format reward checks, §2.2.2, and the layout of R1's
cold-start and rejection-sampled SFT data, §2.3.1 and §2.3.3). Each tag is one
token of :class:`~mlakit.tokenizer.CharTokenizer`.

A simplification, named: R1-Zero wraps the question in a conversation ("A
conversation between User and Assistant. ... User: prompt. Assistant:"). Here the
prompt is the question itself: a character-level model pays for every character
of a fixed preamble and learns nothing from it.

The loss counts the completion and its ``<eos>`` only: :func:`encode_example`
returns the length of ``<bos> prompt`` so that :class:`~mlakit.data.LMBatches`
masks the prompt's targets (its ``loss_mask`` convention). :func:`encode_records`
does this for JSONL records, and refuses, naming the record, one without a
completion or one longer than the model's context.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..tokenizer import CharTokenizer
from .reasoning import format_reasoning
from .records import Record

BOS, EOS = "<bos>", "<eos>"  # the tokenizer's sequence markers, written out


def render(prompt: str, answer: str, reasoning: str | None = None) -> tuple[str, str]:
    """(prompt, completion) as a record holds them: the completion is ``answer``, or with
    ``reasoning`` (a string, possibly empty) R1's ``<think>reasoning</think><answer>answer</answer>``.

    No ``<bos>`` / ``<eos>``: those are added when encoding (:func:`encode_example`);
    :func:`to_text` shows the whole sequence.
    """
    if not answer.strip():
        raise ValueError("render needs a non-empty answer (the verifier reads it)")
    return prompt, answer if reasoning is None else format_reasoning(reasoning, answer)


def to_text(prompt: str, completion: str) -> str:
    """The whole sequence the model trains on, special tokens written out: ``<bos>prompt completion<eos>``."""
    return f"{BOS}{prompt}{completion}{EOS}"


def encode_example(tokenizer: CharTokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """(ids of ``<bos> prompt completion <eos>``, length of ``<bos> prompt``).

    The ids equal ``tokenizer.encode(to_text(prompt, completion))``; the prompt length
    is where the completion starts, so the loss can skip everything before it
    (:class:`~mlakit.data.LMBatches` with ``completion_only``).
    """
    prompt_ids = tokenizer.encode(prompt, bos=True)  # (P,)
    return prompt_ids + tokenizer.encode(completion, eos=True), len(prompt_ids)


def _name(record, index: int) -> str:
    rid = getattr(record, "id", None)
    return f"record {rid!r} (#{index})" if rid else f"record #{index}"


def encode_records(records: Sequence[Record], tokenizer: CharTokenizer,
                   max_len: int | None = None) -> list[tuple[list[int], int]]:
    """:func:`encode_example` of every record; a ValueError names the first bad record.

    Refused: a record whose completion is missing or blank (SFT learns the completion;
    there would be nothing to learn), a character the tokenizer lacks, and, with
    ``max_len`` (the model's ``max_position_embeddings``), an example whose tokens
    (``<bos>`` and ``<eos>`` included) do not fit.
    """
    out = []
    for i, r in enumerate(records):
        completion = getattr(r, "completion", None)
        if not isinstance(completion, str) or not completion.strip():
            raise ValueError(f"{_name(r, i)} has no completion: SFT learns the completion after the prompt "
                             f"(got {completion!r}); drop the record or fill in its completion")
        prompt = getattr(r, "prompt", None)
        if not isinstance(prompt, str):
            raise ValueError(f"{_name(r, i)} has no prompt string (got {prompt!r})")
        try:
            ids, prompt_len = encode_example(tokenizer, prompt, completion)
        except ValueError as e:
            raise ValueError(f"{_name(r, i)}: {e}") from None
        if max_len is not None and len(ids) > max_len:
            raise ValueError(f"{_name(r, i)} is {len(ids)} tokens long (prompt {prompt_len} with <bos>, completion "
                             f"{len(ids) - prompt_len} with <eos>), more than the model's context of {max_len} "
                             f"positions (max_position_embeddings): filter long records out (length_filter(tokenizer=..., max_tokens=...)) or "
                             f"use a model with a longer context")
        out.append((ids, prompt_len))
    return out


__all__ = ["BOS", "EOS", "render", "to_text", "encode_example", "encode_records"]
