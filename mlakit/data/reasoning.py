"""DeepSeek-R1's reasoning format, ``<think>...</think><answer>...</answer>``, read strictly.

R1-Zero's rule rewards (R1 §2.2.2) are an accuracy reward, the answer checked by
rules, and a format reward, the reasoning inside ``<think>`` tags and the answer
inside ``<answer>`` tags. A verifier is only as good as the way it reads the
answer: a model trained against a lax reader learns to please the reader (two
answer blocks, one of which is right; the right digits somewhere in a sentence),
not to answer. So the strict reader here rejects:

- two answer blocks (a hedge: "<answer>41</answer><answer>42</answer>");
- an empty answer;
- text after the answer block (whitespace aside);
- text before it other than one think block;
- a think or answer tag nested in another block.

A completion without any tag is read in the plain format of the pretraining data:
the whole completion (stripped of surrounding whitespace) is the answer, and each
task decides what an answer may look like. "The answer is the last answer block"
is :func:`last_answer`, the lenient reading the strict one is compared with.

:func:`verify_sloppy` is the WRONG verifier, kept for the lesson to contrast:
a substring test that any completion listing many numbers passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

_FORMAT = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
_LAST_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class Parsed:
    """A completion as the strict reader sees it: ``answer`` is None when ``error`` says why."""

    answer: str | None
    think: str | None = None
    plain: bool = False  # True: no tags at all, the whole completion is the answer
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def format_reasoning(think: str, answer: str) -> str:
    """The R1 template: ``<think>think</think><answer>answer</answer>``."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def parse_completion(completion: str) -> Parsed:
    """Read a completion strictly (see the module docstring); never raises."""
    counts = {tag: completion.count(tag) for tag in TAGS}
    if not any(counts.values()):
        answer = completion.strip()
        return Parsed(answer or None, plain=True, error=None if answer else "empty completion")
    if counts[ANSWER_OPEN] == 0 or counts[ANSWER_CLOSE] == 0:
        return Parsed(None, error="no answer block")
    if counts[ANSWER_OPEN] > 1 or counts[ANSWER_CLOSE] > 1:
        return Parsed(None, error="more than one answer block")
    if counts[THINK_OPEN] > 1 or counts[THINK_CLOSE] > 1 or counts[THINK_OPEN] != counts[THINK_CLOSE]:
        return Parsed(None, error="think tags do not pair up")
    body = completion.rstrip()
    if not body.endswith(ANSWER_CLOSE):
        return Parsed(None, error="text after the answer block")
    start = body.index(ANSWER_OPEN)
    answer = body[start + len(ANSWER_OPEN): -len(ANSWER_CLOSE)]
    if any(tag in answer for tag in TAGS):
        return Parsed(None, error="a tag inside the answer block")
    answer = answer.strip()
    if not answer:
        return Parsed(None, error="empty answer")
    before = body[:start].strip()
    think = None
    if before:
        if not (before.startswith(THINK_OPEN) and before.endswith(THINK_CLOSE)):
            return Parsed(None, error="text before the answer outside a think block")
        think = before[len(THINK_OPEN): -len(THINK_CLOSE)]
    return Parsed(answer, think=think)


def strict_answer(completion: str) -> str | None:
    """The answer the strict reader accepts, or None."""
    return parse_completion(completion).answer


def last_answer(completion: str) -> str | None:
    """The lenient reading: the content of the last answer block (stripped), or None. Not a verifier."""
    blocks = _LAST_ANSWER.findall(completion)
    return blocks[-1].strip() if blocks else None


def format_ok(completion: str) -> bool:
    """R1's format reward as a test: one think block then one answer block, nothing else.

    Stricter than :func:`parse_completion`, which also reads plain completions
    and answers without a think block.
    """
    m = _FORMAT.fullmatch(completion)
    if m is None:
        return False
    return all(tag not in m["think"] + m["answer"] for tag in TAGS) and bool(m["answer"].strip())


def verify_sloppy(answer, completion: str) -> bool:
    """THE WRONG VERIFIER, for contrast only: "the reference answer occurs in the completion".

    ``answer`` is the reference answer or a problem (its ``.answer``), so it drops in
    where ``task.verify(problem, completion)`` goes. Passes
    "<answer>41</answer><answer>42</answer>", "42 or 43", "1 2 ... 100": a policy
    optimised against it learns to list numbers, not to answer. Use ``task.verify``.
    """
    return str(getattr(answer, "answer", answer)) in completion


__all__ = ["THINK_OPEN", "THINK_CLOSE", "ANSWER_OPEN", "ANSWER_CLOSE", "Parsed", "format_reasoning",
           "parse_completion", "strict_answer", "last_answer", "format_ok", "verify_sloppy"]
