"""Locality-sensitive hashing by banding: near-duplicate candidates without comparing every pair.

Cut each MinHash signature into b bands of r rows. Two documents are a
candidate pair when all r rows of at least one band agree. One band agrees
with probability s^r for a pair of Jaccard similarity s, so a pair becomes a
candidate with probability

    P(s) = 1 - (1 - s^r)^b                      (:func:`s_curve`)

an S-shaped curve whose steepest rise sits near the threshold
(1 / b)^(1 / r) (:func:`lsh_threshold`; Leskovec, Rajaraman and Ullman,
Mining of Massive Datasets, §3.4). datatrove's default, 14 bands of 8 rows,
puts it at 0.72. :func:`choose_bands` picks (b, r) for a threshold the way
datasketch's ``MinHashLSH`` does: the pair that minimises the area of false
positives below the threshold plus false negatives above it.

:func:`lsh_candidates` does the banding in numpy: each band's r values are
mixed into one 64-bit bucket id (a collision of two different bands has
probability about 2^-64 per pair and only adds a candidate, which the exact
Jaccard check removes), the ids are sorted once per band, and every pair inside
a bucket is emitted. bench/dedup.py measures it against datasketch's
``MinHashLSH`` (a Python dict per band, one insert and one query per document).
A bucket of m documents yields m (m - 1) / 2 pairs: run exact dedup first,
so thousands of identical documents do not share one bucket.
"""

from __future__ import annotations

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: the multiplier of the band mix
_FMIX = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))  # MurmurHash3 fmix64
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed trapz


def s_curve(s, bands: int, rows: int):
    """Probability 1 - (1 - s^r)^b that a pair of Jaccard similarity ``s`` becomes a candidate."""
    s = np.asarray(s, dtype=np.float64)
    out = 1.0 - (1.0 - s**rows) ** bands
    return float(out) if out.ndim == 0 else out


def lsh_threshold(bands: int, rows: int) -> float:
    """(1 / b)^(1 / r): about where the S-curve crosses 1/2 and rises fastest."""
    return (1.0 / bands) ** (1.0 / rows)


def choose_bands(threshold: float, num_perm: int = 128, false_positive_weight: float = 0.5,
                 false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted false positive area
    (integral of P(s) over [0, threshold]) plus false negative area (of 1 - P(s) over [threshold, 1])."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold!r} is invalid: must be in (0, 1)")
    if isinstance(num_perm, bool) or not isinstance(num_perm, int) or num_perm < 1:
        raise ValueError(f"num_perm={num_perm!r} is invalid: must be an integer >= 1")
    below = np.linspace(0.0, threshold, 257)
    above = np.linspace(threshold, 1.0, 257)
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _trapezoid(s_curve(below, b, r), below)
            fn = _trapezoid(1.0 - s_curve(above, b, r), above)
            err = false_positive_weight * fp + false_negative_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def _check_bands(signatures: np.ndarray, bands: int, rows: int) -> None:
    if signatures.ndim != 2:
        raise ValueError(f"signatures must be (N, num_perm); got shape {tuple(signatures.shape)}")
    for name, v in (("bands", bands), ("rows", rows)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} is invalid: must be an integer >= 1")
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands * rows = {bands * rows} is more than the {signatures.shape[1]} slots of a "
                         "signature: lower bands or rows, or compute more permutations")


def band_buckets(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64 bucket ids: band j of document i mixed into one number."""
    _check_bands(signatures, bands, rows)
    sig = signatures.astype(np.uint64, copy=False)
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)  # (N, b)
    with np.errstate(over="ignore"):  # the mix wraps around 2^64 by design
        for j in range(bands):
            h = np.full(sig.shape[0], np.uint64(j + 1), dtype=np.uint64)  # (N,): the band index seeds its ids
            for k in range(j * rows, (j + 1) * rows):
                h = (h ^ sig[:, k]) * _MIX
            h ^= h >> _FMIX[0]
            h *= _FMIX[1]
            h ^= h >> _FMIX[0]
            h *= _FMIX[2]
            h ^= h >> _FMIX[0]
            out[:, j] = h
    return out


def lsh_candidates(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(P, 2) int64 candidate pairs (i < j, sorted, unique): documents sharing a bucket in some band."""
    buckets = band_buckets(signatures, bands, rows)  # (N, b)
    n = buckets.shape[0]
    found = []
    for j in range(bands):
        order = np.argsort(buckets[:, j], kind="stable")  # (N,)
        ids = buckets[order, j]
        same = ids[1:] == ids[:-1]  # (N - 1,): neighbour in the same bucket
        if not same.any():
            continue
        starts = np.flatnonzero(np.r_[True, ~same])  # first position of each bucket
        sizes = np.diff(np.r_[starts, n])
        pairs2 = starts[sizes == 2]  # the common case, vectorised
        found.append(np.stack([order[pairs2], order[pairs2 + 1]], axis=1))
        for start, size in zip(starts[sizes > 2], sizes[sizes > 2], strict=True):
            members = order[start:start + size]
            a, b = np.triu_indices(size, k=1)
            found.append(np.stack([members[a], members[b]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(np.concatenate(found).astype(np.int64), axis=1)  # (P', 2): i < j
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])  # one code per pair, sorted
    return np.stack([codes // n, codes % n], axis=1)


__all__ = ["s_curve", "lsh_threshold", "choose_bands", "band_buckets", "lsh_candidates"]
