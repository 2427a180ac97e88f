"""Teacher sampling with rejection and pass@k: hand-computed pass@k, acceptance counted on a scripted
fake model whose right answers are known, and a tiny random model that is deterministic for a seed."""

import math
from types import SimpleNamespace

import pytest
import torch

from mlakit import ModelConfig
from mlakit.data import AdditionTask, Problem, get_task, mean_pass_at_k, pass_at_k, rejection_sample
from mlakit.model import MiniDeepSeek
from mlakit.tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

# --- pass@k ------------------------------------------------------------------------------------


def test_pass_at_k_by_hand():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # C(7, 5) / C(10, 5)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # n - c = 1 < k: every draw of 2 holds a correct one
    assert pass_at_k(4, 4, 4) == 1.0
    assert mean_pass_at_k(10, [3, 0, 10], 1) == pytest.approx((0.3 + 0 + 1) / 3)


def test_pass_at_k_equals_the_binomial_formula_and_is_stable():
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4)
    assert pass_at_k(100_000, 10, 5_000) == pytest.approx(1 - math.comb(99_990, 5_000) / math.comb(100_000, 5_000))


@pytest.mark.parametrize("args, message", [((0, 0, 1), "n=0"), ((5, 6, 1), r"c=6 is invalid: must be in \[0, n=5\]"),
                                           ((5, 2, 6), r"k=6 is invalid"), ((5, 2, 0), r"k=0"),
                                           ((5.0, 2, 1), "n=5.0")])
def test_pass_at_k_refuses_bad_counts(args, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(*args)


# --- a scripted fake model ----------------------------------------------------------------------

TOK = CharTokenizer()


class ScriptedAdder(torch.nn.Module):
    """Writes "a+b" for prompts whose first operand is even and "a+b+1" for odd ones, then <eos>:
    the acceptance of every problem is known by hand. No cache (use_cache=False)."""

    def forward(self, ids, cache=None, mask=None):
        logits = torch.full((ids.shape[0], ids.shape[1], TOK.vocab_size), -1e4)
        for row, seq in enumerate(ids.tolist()):
            text = TOK.decode([t for t in seq if t not in (TOK.pad_id, TOK.bos_id)])
            prompt, _, written = text.partition("=")
            a, b = map(int, prompt.split("+"))
            target = str(a + b + (a % 2)) + "<eos>"
            script = TOK.encode(target)
            nxt = script[len(TOK.encode(written))] if len(TOK.encode(written)) < len(script) else TOK.eos_id
            logits[row, -1, nxt] = 0.0
        return SimpleNamespace(logits=logits)


def test_acceptance_is_counted_by_hand_on_a_scripted_model():
    task = AdditionTask(1, 2, with_steps=False)
    problems = [Problem(2, 3), Problem(3, 3), Problem(10, 5), Problem(7, 1), Problem(40, 40)]
    result = rejection_sample(ScriptedAdder(), TOK, task, problems, num_samples=3, temperature=1.0,
                              max_new_tokens=6, batch_size=2, use_cache=False, progress=False)
    assert len(result.samples) == 15 and [s.index for s in result.samples[:4]] == [0, 1, 2, 0]
    assert [s.completion for s in result.samples[::3]] == ["5", "7", "15", "9", "80"]
    assert result.correct_counts == [3, 0, 3, 0, 3]
    assert result.acceptance_rate == pytest.approx(9 / 15)
    assert [s.problem for s in result.kept] == [Problem(2, 3), Problem(10, 5), Problem(40, 40)]  # mode "first"
    table = result.by_difficulty()
    assert table[1] == {"problems": 3, "samples": 9, "correct": 3, "acceptance": 1 / 3, "solved": 1, "pass@1": 1 / 3}
    assert table[2]["acceptance"] == 1.0 and table[2]["solved"] == 2
    assert result.pass_at_k(1) == pytest.approx(0.6) and result.pass_at() == {1: 0.6, 2: 0.6, 3: 0.6}


def test_unfinished_completions_are_rejected():
    task = AdditionTask(1, 2, with_steps=False)
    result = rejection_sample(ScriptedAdder(), TOK, task, [Problem(12, 30)], num_samples=2, max_new_tokens=2,
                              use_cache=False, progress=False)
    assert [(s.completion, s.finished, s.correct) for s in result.samples] == [("42", False, False)] * 2


def test_mode_all_keeps_distinct_correct_completions():
    task = AdditionTask(1, 2, with_steps=False)
    result = rejection_sample(ScriptedAdder(), TOK, task, [Problem(2, 2)], num_samples=4, mode="all",
                              use_cache=False, progress=False)
    assert [s.completion for s in result.kept] == ["4"]  # four identical samples: one distinct
    with pytest.raises(ValueError, match="mode='some' is invalid"):
        rejection_sample(ScriptedAdder(), TOK, task, [Problem(2, 2)], mode="some")
    with pytest.raises(ValueError, match="num_samples=0 is invalid"):
        rejection_sample(ScriptedAdder(), TOK, task, [Problem(2, 2)], num_samples=0)


# --- a tiny random model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = ModelConfig.from_preset("nano", vocab_size=TOK.vocab_size, n_routed_experts=0, num_hidden_layers=1,
                                     max_position_embeddings=32)
    return MiniDeepSeek(config).eval()


def test_tiny_model_sampling_is_deterministic_and_counted(tiny):
    task = get_task("addition", max_digits=1)
    problems = list(task.generate(6, seed=0))
    run = lambda seed: rejection_sample(tiny, TOK, task, problems, num_samples=4, temperature=1.0,  # noqa: E731
                                        max_new_tokens=8, batch_size=4, seed=seed, progress=False)
    a, b, c = run(0), run(0), run(1)
    assert [s.completion for s in a.samples] == [s.completion for s in b.samples]
    assert [s.completion for s in a.samples] != [s.completion for s in c.samples]
    assert len(a.samples) == 24 and [s.problem for s in a.samples[::4]] == problems
    for s in a.samples:  # every verdict is the verifier's on a finished completion
        assert s.correct == (s.finished and task.verify(s.problem, s.completion))
    assert a.acceptance_rate == sum(s.correct for s in a.samples) / 24
    assert sum(row["samples"] for row in a.by_difficulty().values()) == 24


def test_context_budget_is_respected(tiny):
    task = get_task("addition", max_digits=1)
    result = rejection_sample(tiny, TOK, task, [Problem(1, 2)], num_samples=2, max_new_tokens=500, progress=False)
    assert all(len(TOK.encode(s.completion)) <= 32 - 5 for s in result.samples)  # <bos>1+2= is 5 tokens
