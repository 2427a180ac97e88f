"""Text normalisation, n-grams and shingles: what dedup and decontamination compare.

Both compare documents as sets of n-grams of a normalised text:

- ``normalize_text``: Unicode NFKC, case-folded, runs of whitespace collapsed
  to one space, stripped. Two texts that differ only in case or spacing are
  the same document (exact dedup hashes this form).
- ``words``: the word units of a text, runs of letters and digits, each other
  non-space character a unit of its own, so "47+85=" is four units
  ("47", "+", "85", "=") and "apples." two. Punctuation is kept (arithmetic
  is made of it) but never glued to a word.
- ``ngrams(text, n, unit)``: the set of n consecutive units (``unit="word"``
  joined by one space, or ``unit="char"``: substrings of the normalised text).
  A text shorter than n has none: GPT-3's 13-gram decontamination (Brown et
  al. 2020, appendix C) cannot see it.
- ``shingles(text, n, unit)``: the same, except that a text shorter than n
  is one shingle, itself, so short documents still get a MinHash (and only
  identical short documents collide). datatrove's default is word 5-grams.
"""

from __future__ import annotations

import re
import unicodedata

UNITS = ("word", "char")
_WORD = re.compile(r"\w+|[^\w\s]")


def normalize_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def words(text: str) -> list[str]:
    """Word units of the normalised text: alphanumeric runs and single punctuation marks."""
    return _WORD.findall(normalize_text(text))


def _units(text: str, n: int, unit: str) -> list[str]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is invalid: must be an integer >= 1")
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r} is invalid: must be 'word' or 'char'")
    return words(text) if unit == "word" else list(normalize_text(text))


def _join(units: list[str], unit: str) -> str:
    return (" " if unit == "word" else "").join(units)


def ngrams(text: str, n: int = 13, unit: str = "word") -> set[str]:
    """Every run of ``n`` consecutive units; empty when the text has fewer than ``n``."""
    units = _units(text, n, unit)
    return {_join(units[i:i + n], unit) for i in range(len(units) - n + 1)}


def shingles(text: str, n: int = 5, unit: str = "word") -> set[str]:
    """Every run of ``n`` consecutive units; a shorter (non-empty) text is one shingle, itself."""
    units = _units(text, n, unit)
    if len(units) < n:
        return {_join(units, unit)} if units else set()
    return {_join(units[i:i + n], unit) for i in range(len(units) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0), as datasketch's estimate says."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


__all__ = ["normalize_text", "words", "ngrams", "shingles", "jaccard"]
