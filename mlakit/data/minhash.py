"""MinHash signatures of many documents at once, bit for bit datasketch's.

MinHash (Broder 1997) keeps, for each of k random permutations of the shingle
hashes, the smallest permuted hash of a document. Two documents agree on one
slot with probability equal to the Jaccard similarity of their shingle sets,
so the share of equal slots estimates it, with standard deviation about
sqrt(J (1 - J) / k): 0.044 at J = 0.5 and k = 128 (REFERENCE §8).

This module does not re-derive the hashing: it calls datasketch 2.0's
``MinHash.generator`` (``MinHash.bulk`` without the list), which initialises
the permutations once and updates each document with one vectorised
``update_batch``, and stacks the hash values into one (N, num_perm) array for
the numpy banding of :mod:`mlakit.data.lsh`. Row i equals
``MinHash(num_perm=num_perm, seed=seed)`` updated with the UTF-8 bytes of
document i's shingles. datasketch 2.0's default permutation scheme,
"affine32" (32-bit SHA-1 of each shingle, pre-mixed by the MurmurHash3
finalizer, then a * h + b mod 2^32), stores uint32 values; they are returned
widened to uint64, so "legacy" and "affine64" signatures fit the same array.
An empty document keeps the scheme's maximum in every slot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..utils import progress as progress_bar
from .text import shingles

SCHEMES = ("affine32", "affine64", "legacy")


def _check(num_perm: int, scheme: str) -> None:
    if isinstance(num_perm, bool) or not isinstance(num_perm, int) or not 1 <= num_perm <= 2**16:
        raise ValueError(f"num_perm={num_perm!r} is invalid: must be an integer in [1, 65536]")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is invalid: must be one of {', '.join(SCHEMES)}")


def minhash_sets(sets: Sequence[Iterable[str]], num_perm: int = 128, seed: int = 1, scheme: str = "affine32",
                 progress: bool = False) -> np.ndarray:
    """(N, num_perm) uint64 MinHash signatures of N sets of strings (hashed as UTF-8)."""
    from datasketch import MinHash

    _check(num_perm, scheme)
    out = np.empty((len(sets), num_perm), dtype=np.uint64)  # (N, num_perm)
    encoded = ([s.encode("utf-8") for s in doc] for doc in sets)
    bar = progress_bar(total=len(sets), desc="minhash", disable=not progress) if progress else None
    for i, m in enumerate(MinHash.generator(encoded, num_perm=num_perm, seed=seed, scheme=scheme)):
        out[i] = m.hashvalues  # (num_perm,) uint32 for affine32, widened
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return out


def minhash_signatures(texts: Sequence[str], num_perm: int = 128, seed: int = 1, n: int = 5,
                       unit: str = "word", scheme: str = "affine32", progress: bool = False) -> np.ndarray:
    """(N, num_perm) uint64 signatures of the :func:`~mlakit.data.text.shingles` of each text."""
    return minhash_sets([shingles(t, n, unit) for t in texts], num_perm, seed, scheme, progress)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray | float:
    """Share of equal slots: the MinHash estimate of Jaccard similarity (rows of (..., num_perm))."""
    if sig_a.shape[-1] != sig_b.shape[-1]:
        raise ValueError(f"signatures of {sig_a.shape[-1]} and {sig_b.shape[-1]} slots cannot be compared")
    est = (sig_a == sig_b).mean(axis=-1)
    return float(est) if np.ndim(est) == 0 else est


__all__ = ["minhash_sets", "minhash_signatures", "estimate_jaccard", "SCHEMES"]
