"""Near dedup end to end: MinHash + LSH against exact all-pairs Jaccard, on planted near duplicates.

    python bench/dedup.py                 (100,000 documents)
    python bench/dedup.py --docs 20000    (a quicker run)

The corpus: documents of WORDS random words from a VOCAB-word vocabulary (two
of them share almost no word 5-gram), and for a PLANTED share of them a copy
with 1 to 8 words replaced: near duplicates whose exact Jaccard similarity
of word 5-gram shingles spans about 0.4 to 0.95 and is computed exactly. Every
other pair is far below any threshold, so the truth is the planted pairs at or
above the threshold (checked against exact all-pairs Jaccard on the subset).

The pipeline is mlakit.data's: shingles, datasketch MinHash signatures
(num_perm 128), numpy LSH banding (bands x rows chosen for recall, see
mlakit.data.dedup.RECALL_WEIGHT), and the exact Jaccard of every candidate.
Beside it: datasketch's MinHashLSH (insert + query) on the same signatures,
and exact all-pairs Jaccard on a SUBSET of documents (blocks of a sparse
matrix product, the fastest exact method here; Python sets per pair are also
timed), extrapolated to the full corpus by its quadratic cost. Peak memory is
the process's peak resident set (it includes numpy, torch and datasketch once
imported). Timings depend on the machine and its load: read the ratios.
"""

from __future__ import annotations

import argparse
import platform
import random
import resource
import sys
import time

import numpy as np

from mlakit.data.dedup import RECALL_WEIGHT
from mlakit.data.lsh import choose_bands, lsh_candidates, lsh_threshold, s_curve
from mlakit.data.minhash import minhash_sets
from mlakit.data.text import jaccard, shingles

WORDS, VOCAB, PLANTED = 100, 50_000, 0.2  # words per document, vocabulary, share of documents that are copies
MAX_CHANGES = 8  # a copy replaces 1..MAX_CHANGES words (each kills up to 5 of its ~96 word 5-grams)
N_GRAM, NUM_PERM, SEED = 5, 128, 1


def peak_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return kb / (1024 * 1024 if sys.platform == "darwin" else 1024)


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """n documents and the planted (original, copy) pairs, copies after all originals (shuffled in)."""
    rng = random.Random(seed)
    n_copies = int(n * PLANTED)
    docs = [[f"w{rng.randrange(VOCAB)}" for _ in range(WORDS)] for _ in range(n - n_copies)]
    sources = rng.sample(range(len(docs)), n_copies)
    for src in sources:
        copy = list(docs[src])
        for pos in rng.sample(range(WORDS), rng.randint(1, MAX_CHANGES)):
            copy[pos] = f"w{rng.randrange(VOCAB)}"
        docs.append(copy)
    order = list(range(n))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    texts = [""] * n
    for old, words in enumerate(docs):
        texts[where[old]] = " ".join(words)
    pairs = [tuple(sorted((where[src], where[n - n_copies + k]))) for k, src in enumerate(sources)]
    return texts, pairs


def all_pairs(sets: list[set], threshold: float, block: int = 512) -> set[tuple[int, int]]:
    """Pairs (i < j) with exact Jaccard >= threshold, every pair evaluated: |A & B| from blocks of a
    sparse product X X^T (X: documents x shingles, 0/1), |A | B| = |A| + |B| - |A & B|."""
    from scipy.sparse import csr_matrix

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, s in enumerate(sets):
        for g in s:
            rows.append(i)
            cols.append(vocab.setdefault(g, len(vocab)))
    x = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(sets), len(vocab)))
    sizes = np.array([len(s) for s in sets], dtype=np.float32)  # (n,)
    found = set()
    for start in range(0, len(sets), block):
        inter = (x[start:start + block] @ x.T).toarray()  # (block, n): every pair of the block with every doc
        union = sizes[start:start + block, None] + sizes[None, :] - inter
        sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        for a, b in zip(*np.nonzero(sim >= threshold), strict=True):
            if start + a < b:
                found.add((int(start + a), int(b)))
    return found


def datasketch_lsh(sig: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Candidate pairs from datasketch's MinHashLSH with the same bands x rows, insert then query."""
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=sig.shape[1], params=(bands, rows))
    sketches = [LeanMinHash(MinHash(seed=SEED, hashvalues=row, scheme="affine32")) for row in sig]
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    return {(i, j) for i, m in enumerate(sketches) for j in lsh.query(m) if i < j}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents in the corpus (default 100,000)")
    parser.add_argument("--subset", type=int, default=5_000, help="documents for exact all-pairs (default 5,000)")
    parser.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity of a near duplicate")
    parser.add_argument("--no-datasketch-lsh", action="store_true", help="skip datasketch's MinHashLSH")
    args = parser.parse_args(argv)
    n, t = args.docs, args.threshold
    bands, rows = choose_bands(t, NUM_PERM, 1 - RECALL_WEIGHT, RECALL_WEIGHT)
    print(f"near dedup of {n:,} documents ({WORDS} random words, {PLANTED:.0%} planted near copies), "
          f"word {N_GRAM}-gram shingles, threshold {t}")
    print(f"LSH: {bands} bands x {rows} rows of {NUM_PERM} permutations: S-curve threshold "
          f"{lsh_threshold(bands, rows):.3f}, P(candidate | s = {t}) = {s_curve(t, bands, rows):.3f}")
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}\n")

    texts, planted = corpus(n)
    base_mb = peak_mb()
    timings = {}
    start = time.perf_counter()
    sets = [shingles(text, N_GRAM) for text in texts]
    timings["shingles"] = time.perf_counter() - start
    start = time.perf_counter()
    sig = minhash_sets(sets, NUM_PERM, SEED)  # (N, num_perm)
    timings["minhash signatures (datasketch)"] = time.perf_counter() - start
    start = time.perf_counter()
    cand = lsh_candidates(sig, bands, rows)  # (P, 2)
    timings[f"LSH candidates (numpy, {bands}x{rows})"] = time.perf_counter() - start
    start = time.perf_counter()
    sims = np.array([jaccard(sets[i], sets[j]) for i, j in cand.tolist()])
    timings["exact Jaccard of candidates"] = time.perf_counter() - start
    pipeline_s = sum(timings.values())
    pipeline_mb = peak_mb()
    found = {tuple(p) for p, s in zip(cand.tolist(), sims, strict=True) if s >= t}

    truth_sim = {p: jaccard(sets[p[0]], sets[p[1]]) for p in planted}
    truth = {p for p, s in truth_sim.items() if s >= t}
    cand_set = {tuple(p) for p in cand.tolist()}
    recall = len(found & truth) / max(1, len(truth))
    precision = len(found & truth) / max(1, len(found))
    cand_precision = len(cand_set & truth) / max(1, len(cand_set))
    est = (sig[cand[:, 0]] == sig[cand[:, 1]]).mean(axis=1) if len(cand) else np.zeros(0)
    est_found = {tuple(p) for p, e in zip(cand.tolist(), est, strict=True) if e >= t}
    est_precision = len(est_found & truth) / max(1, len(est_found))
    est_recall = len(est_found & truth) / max(1, len(truth))

    if not args.no_datasketch_lsh:
        start = time.perf_counter()
        ds_cand = datasketch_lsh(sig, bands, rows)
        ds_lsh_s = time.perf_counter() - start
        same = ds_cand == cand_set

    m = min(args.subset, n)
    sub_sets = sets[:m]
    start = time.perf_counter()
    exact_pairs = all_pairs(sub_sets, t)
    all_pairs_s = time.perf_counter() - start
    py_docs = min(m, 500)
    start = time.perf_counter()
    for i in range(py_docs):
        for j in range(i + 1, py_docs):
            jaccard(sets[i], sets[j])
    py_pair_s = (time.perf_counter() - start) / (py_docs * (py_docs - 1) / 2)
    lsh_in_subset = {p for p in found if p[1] < m}
    truth_in_subset = {p for p in truth if p[1] < m}
    scale = (n / m) ** 2
    total_pairs = n * (n - 1) / 2

    print(f"{'stage':<40}{'seconds':>10}{'docs/s':>12}")
    for name, s in timings.items():
        print(f"{name:<40}{s:>10.2f}{n / max(s, 1e-9):>12,.0f}")
    print(f"{'LSH near dedup, total':<40}{pipeline_s:>10.2f}{n / pipeline_s:>12,.0f}")
    if not args.no_datasketch_lsh:
        print(f"{f'(datasketch MinHashLSH, {bands}x{rows})':<40}{ds_lsh_s:>10.2f}{n / ds_lsh_s:>12,.0f}")
    print(f"{f'exact all-pairs, {m:,} docs (sparse)':<40}{all_pairs_s:>10.2f}{m / all_pairs_s:>12,.0f}")
    print(f"{f'  extrapolated to {n:,} docs (x{scale:,.0f})':<40}{all_pairs_s * scale:>10.1f}"
          f"{n / (all_pairs_s * scale):>12,.0f}")
    print(f"{f'  Python sets, {total_pairs:,.0f} pairs':<40}{py_pair_s * total_pairs:>10.0f}"
          f"{n / (py_pair_s * total_pairs):>12,.1f}")
    print(f"\nspeed-up of LSH at {n:,} docs: {all_pairs_s * scale / pipeline_s:.2f}x over exact all-pairs (sparse), "
          f"{py_pair_s * total_pairs / pipeline_s:,.1f}x over all-pairs with Python sets; it compared "
          f"{len(cand):,} candidate pairs instead of {total_pairs:,.0f}")
    if not args.no_datasketch_lsh:
        print(f"datasketch's MinHashLSH finds the same candidate pairs: {same}")
    print(f"peak memory: {pipeline_mb:,.0f} MB resident after the LSH pipeline ({base_mb:,.0f} MB with the corpus "
          f"built, before it); signatures {sig.nbytes / 2**20:,.0f} MB; a dense {n:,} x {n:,} float32 "
          f"similarity matrix would take {4 * n * n / 2**30:,.1f} GB\n")

    print(f"quality against the {len(planted):,} planted pairs ({len(truth):,} at Jaccard >= {t}):")
    print(f"  recall {recall:.4f}, precision {precision:.4f} (LSH + exact check)")
    print(f"  candidates alone: precision {cand_precision:.4f}; MinHash estimate >= {t} instead of the exact "
          f"check: recall {est_recall:.4f}, precision {est_precision:.4f}")
    print(f"  first {m:,} documents: exact all-pairs finds {len(exact_pairs):,} pairs >= {t}, exactly the planted "
          f"ones there: {exact_pairs == truth_in_subset}; LSH finds {len(lsh_in_subset & exact_pairs):,} of them "
          f"and nothing else: {lsh_in_subset <= exact_pairs}")
    print(f"\n{'planted Jaccard':<18}{'pairs':>8}{'found':>8}{'rate':>8}{'S-curve':>9}")
    edges = [0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0001]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        group = [p for p, s in truth_sim.items() if lo <= s < hi]
        if not group:
            continue
        hit = sum(p in found for p in group)
        cand_hit = sum(p in cand_set for p in group)
        theory = float(np.mean([s_curve(truth_sim[p], bands, rows) for p in group]))
        label = f"[{lo:.2f}, {min(hi, 1.0):.2f}{']' if hi > 1 else ')'}"
        print(f"{label:<18}{len(group):>8,}{hit:>8,}{cand_hit / len(group):>8.3f}{theory:>9.3f}")
    print("(rate: share that became LSH candidates; S-curve: 1 - (1 - s^r)^b averaged over the pairs; "
          f"found: candidates whose exact Jaccard reaches {t})")


if __name__ == "__main__":
    main()
