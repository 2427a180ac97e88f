"""Dedup and decontamination: shingles by hand, MinHash bit for bit against datasketch, Jaccard
estimates, the LSH S-curve by Monte Carlo, idempotent dedup, and planted test items found."""

import random

import numpy as np
import pytest
from datasketch import MinHash

from mlakit.data import (
    Problem,
    WordProblem,
    choose_bands,
    decontaminate,
    estimate_jaccard,
    exact_dedup,
    get_task,
    jaccard,
    key_string,
    lsh_candidates,
    lsh_threshold,
    minhash_sets,
    minhash_signatures,
    near_dedup,
    ngrams,
    normalize_text,
    s_curve,
    shingles,
    words,
)

# --- text, by hand ----------------------------------------------------------------------------


def test_normalisation_words_and_shingles_by_hand():
    assert normalize_text("  Tom  HAS\t3\napples ") == "tom has 3 apples"
    assert words("47+85=") == ["47", "+", "85", "="]
    assert words("Tom has 3 apples.") == ["tom", "has", "3", "apples", "."]
    assert shingles("a b c d", n=2) == {"a b", "b c", "c d"}
    assert shingles("a b", n=5) == {"a b"}  # shorter than n: the text itself
    assert shingles("", n=5) == set()
    assert ngrams("a b", n=5) == set()  # shorter than n: no n-gram at all
    assert shingles("abcd", n=3, unit="char") == {"abc", "bcd"}
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5 and jaccard(set(), set()) == 1.0
    with pytest.raises(ValueError, match="unit='token' is invalid"):
        shingles("a", unit="token")
    with pytest.raises(ValueError, match="n=0 is invalid"):
        ngrams("a", n=0)


# --- MinHash ---------------------------------------------------------------------------------

DOCS = ["the cat sat on the mat and looked at the dog", "the cat sat on a mat and looked at a dog",
        "1+2=3", "", "completely different words in this one here today", "tom has 12 apples."]


@pytest.mark.parametrize("num_perm, seed, n, unit", [(128, 1, 5, "word"), (64, 7, 2, "word"), (32, 3, 4, "char")])
def test_minhash_rows_equal_datasketch_bit_for_bit(num_perm, seed, n, unit):
    sig = minhash_signatures(DOCS, num_perm=num_perm, seed=seed, n=n, unit=unit)
    assert sig.shape == (len(DOCS), num_perm) and sig.dtype == np.uint64
    for row, doc in zip(sig, DOCS, strict=True):
        m = MinHash(num_perm=num_perm, seed=seed)
        for s in shingles(doc, n, unit):
            m.update(s.encode("utf-8"))
        assert np.array_equal(row, m.hashvalues.astype(np.uint64))


def test_minhash_estimates_jaccard_within_0_1_at_128_permutations():
    a = {f"x{i}" for i in range(100)}
    cases = [({f"x{i}" for i in range(50, 150)}, 50 / 150), ({f"x{i}" for i in range(90)} | {"y1", "y2"}, 90 / 102),
             ({f"z{i}" for i in range(100)}, 0.0), (set(a), 1.0)]
    sig = minhash_sets([a] + [b for b, _ in cases], num_perm=128, seed=1)
    for row, (b, truth) in zip(sig[1:], cases, strict=True):
        assert jaccard(a, b) == pytest.approx(truth)
        assert abs(estimate_jaccard(sig[0], row) - truth) < 0.1


# --- LSH ---------------------------------------------------------------------------------------


def test_s_curve_and_threshold_formulas():
    assert s_curve(0.5, 20, 5) == pytest.approx(1 - (1 - 0.5**5) ** 20)
    assert lsh_threshold(14, 8) == pytest.approx((1 / 14) ** (1 / 8))
    assert round(lsh_threshold(14, 8), 2) == 0.72  # datatrove's default
    assert np.allclose(s_curve(np.array([0.0, 1.0]), 9, 13), [0.0, 1.0])
    b, r = choose_bands(0.8, 128)
    assert b * r <= 128 and 0.7 < lsh_threshold(b, r) < 0.9


def _pair_with_jaccard(rng: random.Random, tag: int, size: int, shared: int) -> tuple[set, set]:
    """Two sets of ``size`` elements sharing ``shared``: Jaccard shared / (2 size - shared)."""
    common = {f"{tag}c{i}" for i in range(shared)}
    return common | {f"{tag}a{i}" for i in range(size - shared)}, common | {f"{tag}b{i}" for i in range(size - shared)}


@pytest.mark.parametrize("size, shared", [(60, 40), (60, 48), (60, 56)])
def test_lsh_candidate_probability_matches_the_s_curve(size, shared):
    """Monte Carlo over 300 independent pairs with one exact Jaccard s; std of the rate <= 0.029."""
    bands, rows, pairs = 16, 8, 300
    s = shared / (2 * size - shared)
    rng = random.Random(0)
    sets = [x for k in range(pairs) for x in _pair_with_jaccard(rng, k, size, shared)]
    cand = {tuple(p) for p in lsh_candidates(minhash_sets(sets, num_perm=128, seed=1), bands, rows).tolist()}
    rate = sum((2 * k, 2 * k + 1) in cand for k in range(pairs)) / pairs
    assert abs(rate - s_curve(s, bands, rows)) < 0.09, (s, rate, s_curve(s, bands, rows))


def test_lsh_candidates_are_unique_sorted_pairs():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [1, 2, 3, 4], [7, 7, 3, 4]], dtype=np.uint64)
    assert lsh_candidates(sig, bands=2, rows=2).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [2, 3]]
    assert lsh_candidates(sig, bands=1, rows=4).tolist() == [[0, 2]]
    with pytest.raises(ValueError, match="bands \\* rows = 10 is more than the 4 slots"):
        lsh_candidates(sig, bands=5, rows=2)


# --- dedup -------------------------------------------------------------------------------------


def _doc(rng: random.Random, length: int = 100) -> list[str]:
    return [f"w{rng.randrange(5000)}" for _ in range(length)]


def test_exact_dedup_on_text_and_key_and_idempotent():
    texts = ["12+5=", "12+5= ", "5+12=", "7+1=", "7+1="]
    keys = [Problem(12, 5).key, Problem(12, 5).key, Problem(5, 12).key, (1, 7), (1, 7)]
    r = exact_dedup(texts, keys)
    assert r.keep == [0, 3] and r.duplicate_of == {1: 0, 2: 0, 4: 3} and (r.by_text, r.by_key) == (2, 1)
    assert exact_dedup(texts, keys, per_key=None).keep == [0, 2, 3]
    again = exact_dedup([texts[i] for i in r.keep], [keys[i] for i in r.keep])
    assert again.removed == 0


def test_near_dedup_finds_planted_duplicates_and_is_idempotent():
    rng = random.Random(0)
    base = [_doc(rng) for _ in range(60)]
    texts = [" ".join(d) for d in base]
    planted = {}
    for k in range(0, 60, 3):  # one word changed in the middle: exact Jaccard 91/101 of word 5-grams
        d = list(base[k])
        d[50] = "changed"
        planted[len(texts)] = k
        texts.append(" ".join(d))
    r = near_dedup(texts, threshold=0.8)
    assert r.duplicate_of == planted
    assert np.allclose(r.similarity, 91 / 101)
    again = near_dedup([texts[i] for i in r.keep], threshold=0.8)
    assert again.removed == 0 and again.keep == list(range(len(r.keep)))


def test_near_dedup_of_word_problems_catches_same_template_rewordings():
    task = get_task("wordproblem", min_digits=3, max_digits=3)
    rng = random.Random(1)
    problems = list(task.generate(30, seed=0))
    near = [task.rephrase(p, rng, same_template=True) for p in problems[:10]]
    texts = [p.prompt for p in problems + near]
    r = near_dedup(texts, threshold=0.5, n=3)
    sims = [jaccard(shingles(texts[i], 3), shingles(texts[30 + i], 3)) for i in range(10)]
    found = {j for j in r.duplicate_of if j >= 30}
    assert found == {30 + i for i in range(10) if sims[i] >= 0.5}  # exactly those above the threshold
    assert found  # and some are


# --- decontamination ---------------------------------------------------------------------------


def test_decontamination_finds_injected_items_by_ngram_and_by_key():
    task = get_task("wordproblem")
    train = list(task.generate(200, seed=0))
    eval_items = [WordProblem("+", 812, 77, 1, "li", "books"), WordProblem("-", 640, 13, 0, "zoe", "apples")]
    train_texts = [p.prompt + p.answer for p in train]
    train_keys = [key_string(p.key) for p in train]
    # inject: the first item verbatim inside a longer text, the second as the bare sum it hides
    train_texts[17] = "note: " + eval_items[0].prompt + "889"
    train_keys[17] = key_string((1, 2))
    train_texts[42], train_keys[42] = "640-13=627", key_string(eval_items[1].key)
    texts = [p.prompt for p in eval_items]
    keys = [key_string(p.key) for p in eval_items]
    found = decontaminate(train_texts, texts, n=13, train_keys=train_keys, eval_keys=keys)
    assert 17 in found.indices and found.reasons[17] == "ngram" and found.matches[17] == 0
    assert 42 in found.indices and found.reasons[42] == "key" and found.matches[42] == 1
    clean = [i for i in range(200) if i not in found.indices]
    assert all(train_keys[i] not in keys for i in clean)
    by_ngram_only = decontaminate(train_texts, texts, n=13)
    assert 42 not in by_ngram_only.indices and 17 in by_ngram_only.indices  # n-grams cannot see "640-13="
    chars = decontaminate(train_texts, texts, n=50, unit="char")
    assert 17 in chars.indices and 42 not in chars.indices


def test_decontamination_reports_items_too_short_for_ngrams():
    found = decontaminate(["12+5=17 and more text"], ["12+5="], n=13, train_keys=["[5,12]"], eval_keys=["[5,12]"])
    assert found.indices == [0] and found.reasons == {0: "key"} and found.eval_without_ngrams == 1
    assert found.counts() == {"key": 1}
    with pytest.raises(ValueError, match="train_keys and eval_keys together"):
        decontaminate(["a"], ["b"], train_keys=["k"])
