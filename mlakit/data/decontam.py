"""Decontamination: find the training texts that overlap the evaluation items, by n-grams and by key.

A model evaluated on problems it trained on scores its memory. Two detectors:

- n-gram overlap, as GPT-3 (Brown et al. 2020, appendix C): a training text is
  contaminated when it shares any word 13-gram with an evaluation item (the
  n-grams of :func:`~mlakit.data.text.ngrams`: normalised, lower-cased).
  Character n-grams (``unit="char"``, n = 50) follow GPT-4's 50-character
  substrings; DeepSeekMath used 10-grams, open-r1 8-grams (REFERENCE §8).
  An item shorter than n has no n-gram and cannot be found this way: "12+5="
  is 4 word units. ``eval_without_ngrams`` counts them.
- key matching: a training problem whose canonical key equals an evaluation
  item's key is the same problem, whatever its wording ("5+12=" or "there are
  12 marbles in a box and 5 in a bag...").

Returns the indices of the training texts to remove and, for each, why and
which evaluation item it matched: a :class:`Contamination`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from .text import ngrams


@dataclass
class Contamination:
    indices: list[int]  # training texts to remove, ascending
    reasons: dict[int, str]  # index -> "ngram", "key" or "ngram+key"
    matches: dict[int, int]  # index -> the first evaluation item it overlaps
    n: int
    unit: str
    eval_without_ngrams: int = 0  # evaluation items shorter than n units: only a key can match them

    def __len__(self) -> int:
        return len(self.indices)

    def counts(self) -> dict[str, int]:
        """How many were found by n-grams only, by key only, by both."""
        return dict(Counter(self.reasons.values()))


def decontaminate(train_texts: Sequence[str], eval_texts: Sequence[str], n: int = 13, unit: str = "word",
                  train_keys: Sequence[Hashable] | None = None,
                  eval_keys: Sequence[Hashable] | None = None) -> Contamination:
    """Training texts sharing an n-gram or a key with an evaluation item (see the module docstring)."""
    if (train_keys is None) != (eval_keys is None):
        raise ValueError("key matching needs train_keys and eval_keys together (or neither)")
    if train_keys is not None and len(train_keys) != len(train_texts):
        raise ValueError(f"{len(train_keys)} train_keys for {len(train_texts)} train_texts")
    if eval_keys is not None and len(eval_keys) != len(eval_texts):
        raise ValueError(f"{len(eval_keys)} eval_keys for {len(eval_texts)} eval_texts")
    owner: dict[str, int] = {}  # n-gram -> first evaluation item that has it
    short = 0
    for j, text in enumerate(eval_texts):
        grams = ngrams(text, n, unit)
        short += not grams
        for g in grams:
            owner.setdefault(g, j)
    key_owner: dict[Hashable, int] = {}
    for j, key in enumerate(eval_keys or ()):
        key_owner.setdefault(key, j)
    reasons, matches = {}, {}
    for i, text in enumerate(train_texts):
        why = []
        if owner:
            hits = [owner[g] for g in ngrams(text, n, unit) if g in owner]
            if hits:
                why.append("ngram")
                matches[i] = min(hits)  # the first evaluation item, whatever order the set iterates in
        if train_keys is not None and train_keys[i] in key_owner:
            why.append("key")
            matches.setdefault(i, key_owner[train_keys[i]])
        if why:
            reasons[i] = "+".join(why)
    return Contamination(sorted(reasons), reasons, matches, n, unit, short)


__all__ = ["Contamination", "decontaminate"]
