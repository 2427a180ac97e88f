"""Checkers for the exercises of lesson 08: synthetic data (pass@k, R1's answer format read strictly, n-gram
decontamination, the LSH candidate probability).

The references follow the papers and agree with the library: the unbiased pass@k of Chen et al. 2021
(:func:`mlakit.data.pass_at_k`), R1's format reward with its answer (:func:`mlakit.data.format_ok`,
:func:`mlakit.data.last_answer`), GPT-3's n-gram overlap (:func:`mlakit.data.decontaminate` with word
n-grams) and the banding S-curve (:func:`mlakit.data.s_curve`). They are written here independently, so
the tests can compare them with the library. Each checker runs the learner's function on cases chosen
so that every typical mistake gives a different answer somewhere, and :func:`diagnose` names the one
the learner's answers equal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from ...data.text import words
from ._core import Answer, _as_number, _Fail, _LearnerError, checker, diagnose


def _call(fn: Callable, what: str, *args):
    """The learner's result, or a FAIL that names the call which raised."""
    try:
        return fn(*args)
    except _LearnerError as e:
        raise _Fail(f"{what} raised {e}") from None


# ---------------------------------------------------------------- 08.1
def _pass_at_k(n: int, c: int, k: int, *, kind: str = "unbiased") -> float:
    """pass@k as defined, or as one typical mistake computes it."""
    if kind == "c/n":
        return c / n
    if kind == "with_replacement":  # the biased plug-in estimate 1 - (1 - c/n)^k
        return 1.0 - (1.0 - c / n) ** k
    if kind == "all_wrong":  # forgot the "1 -": the chance that all k are wrong
        return math.comb(n - c, k) / math.comb(n, k)
    if kind == "floor_division":  # 1 - C(n-c, k) // C(n, k): integer division
        return 1 - math.comb(n - c, k) // math.comb(n, k)
    if kind == "swapped":  # C(c, k): "k correct samples drawn"
        return math.comb(c, k) / math.comb(n, k)
    if kind == "union_bound":
        return min(1.0, k * c / n)
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # math.comb(m, k) is 0 when k > m: pass@k = 1


def reference_pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: 1 - C(n - c, k) / C(n, k), the chance that k of the n samples, drawn without
    replacement, include at least one of the c correct ones (1.0 when n - c < k)."""
    return _pass_at_k(n, c, k)


# (n, c, k): c = 0, c = n, n - c < k, k = n, k = 1, and a large n where float binomials would overflow
PASS_AT_K_CASES = [(10, 3, 1), (10, 3, 2), (10, 3, 5), (10, 0, 4), (10, 10, 1), (10, 10, 10), (10, 8, 3),
                   (10, 3, 10), (10, 1, 10), (16, 1, 8), (5, 2, 4), (200, 13, 50), (2000, 7, 1000)]

_PASS_AT_K_MISTAKES = [
    ("c/n", "that is c/n, the share of correct samples, whatever k is: it is pass@1 only. Hint: pass@k is the "
            "chance that at least one of k samples is correct: 1 - C(n - c, k) / C(n, k)"),
    ("with_replacement", "that is 1 - (1 - c/n)^k, which draws the k samples with replacement. It is biased "
                         "(it underestimates: with n - c < k every draw of k from the n contains a correct one, "
                         "so pass@k = 1). Hint: draw without replacement: 1 - C(n - c, k) / C(n, k)"),
    ("all_wrong", "that is C(n - c, k) / C(n, k), the chance that all k samples are wrong. Hint: pass@k is "
                  "1 minus it"),
    ("floor_division", "that is 1 - C(n - c, k) // C(n, k): the binomials are integers, and // rounds their "
                       "ratio down to 0. Hint: divide with /"),
    ("swapped", "that is C(c, k) / C(n, k), the chance that all k samples are correct. Hint: count the draws "
                "with no correct sample, C(n - c, k), and take 1 minus their share"),
    ("union_bound", "that is min(1, k c / n), the union bound, not the probability. Hint: 1 - C(n - c, k) / C(n, k)"),
]


def _same_values(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b, strict=True))


@checker("08.1", "pass_at_k")
def check_pass_at_k(pass_at_k: Answer) -> str:
    """Exercise 08.1: pass_at_k(n, c, k) -> the unbiased pass@k of n samples of which c are correct."""

    got = []
    for n, c, k in PASS_AT_K_CASES:
        try:
            value = pass_at_k(n, c, k)
        except _LearnerError as e:
            hint = (". Hint: factorials and binomials of large n overflow floats: use math.comb (exact integers) "
                    "or the product prod(1 - k / i for i in range(n - c + 1, n + 1))"
                    if isinstance(e.error, OverflowError) else "")
            raise _Fail(f"pass_at_k({n}, {c}, {k}) raised {e}{hint}") from None
        value = float(_as_number(value, f"pass_at_k({n}, {c}, {k})"))
        if math.isnan(value):
            raise _Fail(f"pass_at_k({n}, {c}, {k}) is nan. Hint: compute with exact integer binomials "
                        "(math.comb) or the product form, never 0/0 or inf/inf of float factorials")
        got.append(value)
    want = [reference_pass_at_k(*case) for case in PASS_AT_K_CASES]
    if _same_values(got, want):
        return (f"right on {len(PASS_AT_K_CASES)} cases, among them c = 0, c = n, n - c < k, k = n and "
                f"n = {PASS_AT_K_CASES[-1][0]}")
    bad = next(i for i, (a, b) in enumerate(zip(got, want, strict=True))
               if not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9))
    n, c, k = PASS_AT_K_CASES[bad]
    where = f"pass_at_k({n}, {c}, {k}) = {got[bad]:.6g}; expected {want[bad]:.6g}"
    wrong = [([_pass_at_k(*case, kind=kind) for case in PASS_AT_K_CASES], hint) for kind, hint in _PASS_AT_K_MISTAKES]
    diagnose(got, wrong, same=_same_values, prefix=f"{where}: ")
    if n - c < k:
        raise _Fail(f"{where}. Hint: with n - c = {n - c} < k = {k} wrong samples, every choice of k samples "
                    "contains a correct one, so pass@k = 1 (math.comb(n - c, k) is 0 there)")
    if c == 0:
        raise _Fail(f"{where}. Hint: with no correct sample no draw can pass: pass@k = 0")
    raise _Fail(f"{where}. Hint: 1 - C(n - c, k) / C(n, k), with math.comb or the product "
                "prod(1 - k / i for i in range(n - c + 1, n + 1))")


# ---------------------------------------------------------------- 08.2
_TAG = ("<think>", "</think>", "<answer>", "</answer>")
_R1 = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)


def reference_r1_answer(completion: str) -> str | None:
    """The answer of a completion in R1's format ``<think>...</think><answer>...</answer>``, or None.

    Exactly one think block then exactly one answer block, nothing else but whitespace around and
    between them, no tag inside a block; the answer is the text of the answer block with surrounding
    whitespace removed, and an empty answer is no answer (None).
    """
    m = _R1.fullmatch(completion)
    if m is None or any(tag in m.group(1) + m.group(2) for tag in _TAG):
        return None
    answer = m.group(2).strip()
    return answer or None


# (completion, expected, what the case tests, the hint when the learner's answer differs)
R1_CASES: list[tuple[str, str | None, str, str]] = [
    ("<think>7+5=12,4+8+1=13</think><answer>132</answer>", "132", "a well-formed completion",
     "read the text between <answer> and </answer>"),
    ("<think>7+5=12</think>\n<answer> 132 \n</answer>\n", "132", "whitespace around the answer and the blocks",
     "strip the whitespace around the answer; whitespace between and after the blocks is allowed"),
    ("<think>hm</think><answer>131</answer><answer>132</answer>", None, "two answer blocks",
     "a completion with two answer blocks hedges: a reader that takes the first or the last lets a model list "
     "several answers and be paid when one is right. Return None unless there is exactly one answer block"),
    ("<think>hm</think><answer></answer>", None, "an empty answer block",
     "an empty answer (or one of whitespace only) is no answer: return None, not an empty string"),
    ("<think>hm</think><answer>  </answer>", None, "an answer block of whitespace only",
     "an answer of whitespace only is no answer: strip it, and return None when nothing is left"),
    ("<think>hm</think><answer>132</answer> or maybe 131", None, "text after the answer block",
     "text after the answer block is not allowed (only whitespace): the completion must end with </answer>"),
    ("<think>hm</think><answer>the sum is 132</answer>", "the sum is 132", "words around the digits",
     "return the whole answer text, not the digits found in it: the verifier then decides that 'the sum is 132' "
     "is not the answer 132. A reader that fishes digits out of the text passes answers that merely contain them"),
    ("<think>hm</think><answer>1132</answer>", "1132", "digits that contain the right ones",
     "return the answer text as it is: '1132' contains '132' but is a different number"),
    ("<answer>132</answer>", None, "no think block",
     "R1's format asks for the reasoning in a think block before the answer: return None without one"),
    ("so <think>hm</think><answer>132</answer>", None, "text before the think block",
     "nothing but whitespace may come before the think block"),
    ("<think>hm</think>132", None, "no answer block",
     "without an answer block there is no answer: return None"),
    ("<think>a</think><think>b</think><answer>132</answer>", None, "two think blocks",
     "exactly one think block: two are not R1's format"),
    ("<think>hm</think><answer>132<answer></answer>", None, "a tag inside the answer block",
     "a tag inside a block breaks the format: return None when the answer or the reasoning contains "
     "<think>, </think>, <answer> or </answer>"),
    ("<think>hm <answer>9</answer></think><answer>132</answer>", None, "an answer block inside the think block",
     "an answer tag inside the think block is a second answer in disguise: return None"),
    ("132", None, "plain text without tags", "a completion without tags is not in R1's format: return None"),
]


def _show(value) -> str:
    return "None" if value is None else repr(value)


@checker("08.2", "r1_answer")
def check_r1_answer(r1_answer: Answer) -> str:
    """Exercise 08.2: r1_answer(completion) -> the answer of a completion in R1's format, or None."""

    for completion, want, what, hint in R1_CASES:
        got = _call(r1_answer, f"r1_answer({completion!r})", completion)
        if got is not None and not isinstance(got, str):
            raise _Fail(f"r1_answer({completion!r}) returned a {type(got).__name__}; return the answer as a str, "
                        "or None")
        if got == want:
            continue
        where = f"{what}: r1_answer({completion!r}) returned {_show(got)}; expected {_show(want)}"
        if isinstance(got, str) and "</answer>" in got:
            raise _Fail(f"{where}. Hint: the match ran across the end of a block: use a non-greedy (.*?) "
                        "group, and refuse a completion with more than one answer block")
        if want is not None and isinstance(got, str) and got.strip() == want:
            raise _Fail(f"{where}. Hint: strip the whitespace around the answer (str.strip())")
        if want is None and got == "":
            raise _Fail(f"{where}. Hint: return None for an empty answer, not an empty string")
        raise _Fail(f"{where}. Hint: {hint}")
    return (f"right on {len(R1_CASES)} completions: one think block, one answer block, nothing after it, "
            "no empty or hedged answer")


# ---------------------------------------------------------------- 08.3
def _ngram_contamination(train_texts, eval_texts, n, *, split="words", off_by_one=False, short_is_one=False,
                         which="train"):
    """Indices of the training texts that share a word n-gram with an evaluation text, or a typical mistake."""
    def units(text):
        if split == "words":
            return words(text)
        if split == "whitespace":
            return text.split()
        return list(text)  # characters

    def grams(text):
        u = units(text)
        if len(u) < n:
            return {tuple(u)} if short_is_one and u else set()
        stop = len(u) - n + (0 if off_by_one else 1)
        return {tuple(u[i:i + n]) for i in range(stop)}

    eval_grams = [grams(t) for t in eval_texts]
    seen = set().union(*eval_grams) if eval_grams else set()
    if which == "eval":
        train_grams = set().union(*(grams(t) for t in train_texts)) if train_texts else set()
        return [j for j, g in enumerate(eval_grams) if g & train_grams]
    return [i for i, t in enumerate(train_texts) if grams(t) & seen]


def reference_ngram_contamination(train_texts: Sequence[str], eval_texts: Sequence[str], n: int) -> list[int]:
    """Indices (ascending) of the training texts that share at least one word n-gram with an evaluation text.

    Word units are :func:`mlakit.data.words` (normalised, lower-cased; punctuation marks are units of their
    own). A text with fewer than n units has no n-gram, so it can neither match nor be matched: GPT-3's
    13-gram rule is blind to short items.
    """
    return _ngram_contamination(train_texts, eval_texts, n)


_EVAL_TEXTS = [
    "Tom has 12 apples and buys 5 more. How many apples does Tom have now?",
    "there were 40 books on the table. zoe took 7 of them. how many books are left?",
    "12+5=",
]
_TRAIN_TEXTS = [
    "mia has 3 pencils and buys 9 more. how many pencils does mia have now?",  # 0: same template, other words
    "tom has 12 apples and buys 5 more. how many apples does tom have now? 17",  # 1: the item, lower case
    "Question: there were 40 books on the table. Zoe took 7 of them.",  # 2: a long prefix of item 1
    "How many books are left?",  # 3: the last 6 units of item 1, its last n-gram for n = 6
    "12+5=17",  # 4: the short item, which n-grams cannot see
    "12+5=",  # 5: the short item verbatim
    "tom has 12 apples",  # 6: shares words, but fewer than n in a row
    "Tom  has 12 apples and\tbuys 5 more.",  # 7: other spacing, 9 units in a row with item 0
]
# (n, train texts, eval texts): n-gram sizes around the texts' lengths, and an empty evaluation set
NGRAM_CASES = [(8, _TRAIN_TEXTS, _EVAL_TEXTS), (6, _TRAIN_TEXTS, _EVAL_TEXTS), (13, _TRAIN_TEXTS, _EVAL_TEXTS),
               (4, _TRAIN_TEXTS, _EVAL_TEXTS[2:]), (8, _TRAIN_TEXTS, [])]

_NGRAM_MISTAKES = [
    (dict(short_is_one=True), "a text shorter than n units became one n-gram of its own, so '12+5=' matched. "
                              "Hint: a text with fewer than n word units has no n-gram (GPT-3's rule): it "
                              "cannot be found this way, which is why the lesson matches keys as well"),
    (dict(off_by_one=True), "the last n-gram of each text is missing. Hint: a text of L units has L - n + 1 "
                            "n-grams: range(len(units) - n + 1)"),
    (dict(split="whitespace"), "the texts are split on whitespace, so 'Tom' and 'tom', or 'more.' and 'more', "
                               "differ. Hint: split with mlakit.data.words, which normalises case and spacing and "
                               "makes each punctuation mark a unit"),
    (dict(split="chars"), "these are character n-grams. Hint: n counts word units: split with mlakit.data.words"),
    (dict(which="eval"), "these are indices of evaluation texts. Hint: return the indices of the training texts "
                         "to remove"),
    (dict(short_is_one=True, off_by_one=True), "a short text became one n-gram and the last n-gram of each "
                                               "text is missing. Hint: L - n + 1 n-grams, none when L < n"),
]


def _as_indices(value, what: str) -> list[int]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise _Fail(f"{what} should be a list of indices, got {type(value).__name__}")
    items = list(value)
    if any(isinstance(i, bool) or not isinstance(_as_number(i, what), int) for i in items):
        raise _Fail(f"{what} should hold integer indices; got {items[:5]}")
    items = [int(_as_number(i, what)) for i in items]
    if len(set(items)) != len(items):
        raise _Fail(f"{what} lists an index twice ({items}). Hint: one entry per training text, even when it "
                    "shares several n-grams")
    return sorted(items)


@checker("08.3", "ngram_contamination")
def check_ngram_contamination(ngram_contamination: Answer) -> str:
    """Exercise 08.3: ngram_contamination(train_texts, eval_texts, n) -> indices of contaminated training texts."""

    got = []
    for n, train, evals in NGRAM_CASES:
        what = f"ngram_contamination(..., n={n})" + ("" if evals else " with no evaluation texts")
        got.append(_as_indices(_call(ngram_contamination, what, list(train), list(evals), n), what))
    want = [reference_ngram_contamination(train, evals, n) for n, train, evals in NGRAM_CASES]
    if got != want:
        bad = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
        n, train, evals = NGRAM_CASES[bad]
        where = f"with n = {n} on the lesson's texts you return {got[bad]}; expected {want[bad]}"
        wrong = [([_ngram_contamination(tr, ev, m, **switches) for m, tr, ev in NGRAM_CASES], hint)
                 for switches, hint in _NGRAM_MISTAKES]
        diagnose(got, wrong, same=lambda a, b: a == b, prefix=f"{where}: ")
        extra, missing = sorted(set(got[bad]) - set(want[bad])), sorted(set(want[bad]) - set(got[bad]))
        if extra:
            i = extra[0]
            raise _Fail(f"{where}. Training text {i} ({train[i]!r}) shares no run of {n} word units with an "
                        "evaluation text. Hint: compare n-grams (runs of n consecutive units), not single words "
                        "or substrings")
        i = missing[0]
        raise _Fail(f"{where}. Training text {i} ({train[i]!r}) shares a run of {n} word units with an evaluation "
                    "text. Hint: n-grams of mlakit.data.words(text), L - n + 1 of them per text")
    return (f"right on {len(NGRAM_CASES)} cases: word n-grams after normalising, all L - n + 1 of them, and "
            "texts shorter than n are invisible")


# ---------------------------------------------------------------- 08.4
def _candidate_probability(s: float, bands: int, rows: int, *, kind: str = "s-curve") -> float:
    if kind == "swapped":  # b rows per band, r bands
        return 1.0 - (1.0 - s**bands) ** rows
    if kind == "one_band":
        return s**rows
    if kind == "all_bands":  # every band must agree
        return (s**rows) ** bands
    if kind == "union_bound":
        return bands * s**rows
    if kind == "all_slots":  # any one of the b * r slots agrees
        return 1.0 - (1.0 - s) ** (bands * rows)
    return 1.0 - (1.0 - s**rows) ** bands


def reference_candidate_probability(s: float, bands: int, rows: int) -> float:
    """1 - (1 - s^r)^b: the chance that a pair of Jaccard similarity s agrees on all r rows of at least one
    of b bands, so that LSH makes it a candidate."""
    return _candidate_probability(s, bands, rows)


# (s, bands, rows): the edges s = 0 and s = 1, one band, one row, and the bandings of the lesson
CANDIDATE_CASES = [(0.0, 16, 8), (1.0, 16, 8), (0.5, 20, 5), (0.8, 16, 8), (0.72, 14, 8), (0.3, 1, 4),
                   (0.3, 4, 1), (0.9, 9, 13), (0.6, 3, 2)]

_CANDIDATE_MISTAKES = [
    ("swapped", "bands and rows are swapped. Hint: a band agrees when all r of its rows agree (s^r); the pair is "
                "a candidate when at least one of the b bands agrees"),
    ("one_band", "that is s^r, the chance that one band agrees. Hint: the pair needs at least one of b bands: "
                 "1 - (1 - s^r)^b"),
    ("all_bands", "that is the chance that every band agrees. Hint: one agreeing band is enough: "
                  "1 - (1 - s^r)^b"),
    ("union_bound", "that is b s^r, the union bound, which exceeds 1. Hint: 1 - (1 - s^r)^b"),
    ("all_slots", "that is 1 - (1 - s)^(b r): any single slot agreeing. Hint: all r rows of a band must agree"),
]


@checker("08.4", "candidate_probability")
def check_candidate_probability(candidate_probability: Answer) -> str:
    """Exercise 08.4: candidate_probability(s, bands, rows) -> P(LSH makes a pair of similarity s a candidate)."""

    got = []
    for s, b, r in CANDIDATE_CASES:
        what = f"candidate_probability({s}, {b}, {r})"
        got.append(float(_as_number(_call(candidate_probability, what, s, b, r), what)))
    want = [reference_candidate_probability(*case) for case in CANDIDATE_CASES]
    if _same_values(got, want):
        return f"right on {len(CANDIDATE_CASES)} cases, among them s = 0, s = 1, one band and one row per band"
    bad = next(i for i, (a, b) in enumerate(zip(got, want, strict=True))
               if not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9))
    s, b, r = CANDIDATE_CASES[bad]
    where = f"candidate_probability({s}, {b}, {r}) = {got[bad]:.6g}; expected {want[bad]:.6g}"
    wrong = [([_candidate_probability(*case, kind=kind) for case in CANDIDATE_CASES], hint)
             for kind, hint in _CANDIDATE_MISTAKES]
    diagnose(got, wrong, same=_same_values, prefix=f"{where}: ")
    raise _Fail(f"{where}. Hint: one band agrees with probability s^r; none of b independent bands agrees with "
                "probability (1 - s^r)^b")


__all__ = ["reference_pass_at_k", "check_pass_at_k", "reference_r1_answer", "check_r1_answer",
           "reference_ngram_contamination", "check_ngram_contamination", "reference_candidate_probability",
           "check_candidate_probability"]
