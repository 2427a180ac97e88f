"""Deduplication, exact and near: keep the first of each group of (near-)identical documents.

Exact (REFERENCE §8: normalise, hash, keep the first): two documents are
duplicates when their normalised texts (:func:`~mlakit.data.text.normalize_text`)
are equal, or when they carry the same canonical problem key ("47+85=" and
"85+47=", two wordings of one word problem), of which at most ``per_key`` are
kept.

Near (Broder 1997; the pipeline of datatrove and of DeepSeek's web data):
MinHash signatures of the shingles (:mod:`~mlakit.data.minhash`), LSH banding
for candidate pairs (:mod:`~mlakit.data.lsh`), then the exact Jaccard
similarity of each candidate's shingle sets, so a pair is a duplicate only if
it really is at least ``threshold`` similar: the banding decides recall (tuned
for it, :data:`RECALL_WEIGHT`), the check makes precision 1. Duplicate pairs are joined into clusters (union-find)
and each cluster keeps its first document. Both are idempotent: deduplicating
the kept documents again removes nothing, because whether two documents are
duplicates depends on those two alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .lsh import choose_bands, lsh_candidates
from .minhash import minhash_sets
from .text import jaccard, normalize_text, shingles

# The exact Jaccard check removes every false positive the banding lets through, so the banding favours
# recall: missing a pair costs 19x more than checking one too many. At threshold 0.8 and 128
# permutations this picks 16 bands of 8 rows, P(candidate | s = 0.8) = 0.95; datasketch's equal
# weights pick 9 x 13, P = 0.40 (half the pairs at the threshold are missed).
RECALL_WEIGHT = 0.95


@dataclass
class DedupResult:
    """Indices kept, in order, and for each removed index the kept index it duplicates."""

    keep: list[int]
    duplicate_of: dict[int, int]
    by_text: int = 0  # exact: removed for equal normalised text
    by_key: int = 0  # exact: removed for a key seen per_key times already
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64), repr=False)  # near: (P, 2)
    similarity: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # near: (P,) exact Jaccard
    candidates: int = 0  # near: candidate pairs from the banding
    bands: int = 0
    rows: int = 0

    @property
    def removed(self) -> int:
        return len(self.duplicate_of)


def exact_dedup(texts: Sequence[str], keys: Sequence[Hashable] | None = None, per_key: int | None = 1) -> DedupResult:
    """Keep the first of equal normalised texts and at most ``per_key`` texts per key (None: any number)."""
    if keys is not None and len(keys) != len(texts):
        raise ValueError(f"{len(keys)} keys for {len(texts)} texts: give one key per text (or none)")
    if per_key is not None and (isinstance(per_key, bool) or not isinstance(per_key, int) or per_key < 1):
        raise ValueError(f"per_key={per_key!r} is invalid: must be an integer >= 1 (or None)")
    first_text: dict[str, int] = {}
    first_key: dict[Hashable, int] = {}
    kept_per_key: dict[Hashable, int] = {}
    keep, dup, by_text, by_key = [], {}, 0, 0
    for i, text in enumerate(texts):
        norm = normalize_text(text)
        if norm in first_text:
            dup[i] = first_text[norm]
            by_text += 1
            continue
        if keys is not None:
            key = keys[i]
            if per_key is not None and kept_per_key.get(key, 0) >= per_key:
                dup[i] = first_key[key]
                by_key += 1
                continue
            first_key.setdefault(key, i)
            kept_per_key[key] = kept_per_key.get(key, 0) + 1
        first_text[norm] = i
        keep.append(i)
    return DedupResult(keep, dup, by_text=by_text, by_key=by_key)


def _clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """(n,) the smallest index of each document's cluster (union-find over the pairs)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs.tolist():
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)  # the smaller index represents the cluster
    return np.array([root(i) for i in range(n)], dtype=np.int64)


def near_dedup(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128, n: int = 5,
               unit: str = "word", seed: int = 1, bands: int | None = None, rows: int | None = None,
               exact_check: bool = True, false_negative_weight: float = RECALL_WEIGHT,
               progress: bool = False) -> DedupResult:
    """Remove near duplicates: MinHash + LSH candidates, checked by exact Jaccard >= ``threshold``.

    ``bands`` and ``rows`` default to :func:`~mlakit.data.lsh.choose_bands` for the threshold with
    false negatives weighted ``false_negative_weight`` and false positives the rest.
    With ``exact_check=False`` a candidate counts when its MinHash estimate reaches the threshold.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold!r} is invalid: must be in (0, 1]")
    if (bands is None) != (rows is None):
        raise ValueError("give bands and rows together (or neither, to choose them for the threshold)")
    if bands is None:
        bands, rows = choose_bands(min(threshold, 0.99), num_perm, 1.0 - false_negative_weight,
                                   false_negative_weight)
    sets = [shingles(t, n, unit) for t in texts]
    sig = minhash_sets(sets, num_perm, seed, progress=progress)  # (N, num_perm)
    cand = lsh_candidates(sig, bands, rows)  # (P, 2)
    if exact_check:
        sim = np.array([jaccard(sets[i], sets[j]) for i, j in cand.tolist()], dtype=np.float64)
    else:
        sim = (sig[cand[:, 0]] == sig[cand[:, 1]]).mean(axis=1) if len(cand) else np.zeros(0)
    hit = sim >= threshold
    pairs, sim = cand[hit], sim[hit]
    rep = _clusters(len(texts), pairs)
    keep = [i for i in range(len(texts)) if rep[i] == i]
    dup = {i: int(rep[i]) for i in range(len(texts)) if rep[i] != i}
    return DedupResult(keep, dup, pairs=pairs, similarity=sim, candidates=len(cand), bands=bands, rows=rows)


__all__ = ["DedupResult", "exact_dedup", "near_dedup"]
