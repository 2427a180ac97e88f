"""Lesson 09 checkers: the references equal the library, known-wrong answers fail with their hint, stubs are not
attempted, boundary cases show each diagnosed mistake."""

import pytest
import torch
import torch.nn.functional as F
from learner import as_learner, assert_checker_basics

from mlakit.course import checks
from mlakit.course.checks import FAIL, PASS
from mlakit.course.checks.lesson09 import (
    _DISTILL_MISTAKES,
    _MASK_MISTAKES,
    _RENDER_MISTAKES,
    _distill,
    _mask_cases,
    _render,
    _sft_mask,
)
from mlakit.data import AdditionTask, LMBatches, encode_example, encode_records, render, to_text
from mlakit.data.records import Record
from mlakit.losses import distill_loss, kl_per_token
from mlakit.tokenizer import CharTokenizer

TOK = CharTokenizer()



# ------------------------------------------------- references against the library
def test_sft_loss_mask_reference_equals_lm_batches():
    task = AdditionTask(1, 3)
    records = []
    for i, p in enumerate(task.generate(9, seed=4)):
        completion = render(p.prompt, p.answer, task.reasoning(p) if i % 2 else None)[1]  # R1 format and plain
        records.append(Record(f"r{i}", "addition", p.prompt, completion, p.answer))
    examples = encode_records(records, TOK)
    batch = LMBatches(examples, batch_size=9, pad_id=TOK.pad_id).collate(examples)
    prompt_lens = torch.tensor([n for _, n in examples])
    mask = checks.reference_sft_loss_mask(batch["targets"], prompt_lens, TOK.pad_id)
    assert torch.equal(mask, batch["loss_mask"])


def test_the_mask_cases_look_like_lm_batches():
    for targets, prompt_lens, pad_id, eos_id in _mask_cases():
        B, T = targets.shape
        assert (targets == pad_id).any() and not (targets[:, :1] == pad_id).any()
        assert len(set(prompt_lens.tolist())) > 1  # rows with different prompt lengths
        assert bool(((targets != pad_id).sum(1) == T).any())  # one row without padding
        assert int((targets == eos_id).sum()) == B  # one eos per row


@pytest.mark.parametrize("teacher, student, temperature, kl, scaled", [
    ([2.0, 1.0, 0.0], [1.0, 1.0, 0.0], 1.0, 0.1196, 0.1196),  # REFERENCE.md section 5's check
    ([2.0, 1.0, 0.0], [1.0, 1.0, 0.0], 2.0, 0.0310, 0.1240),
])
def test_distill_reference_on_hand_computed_values(teacher, student, temperature, kl, scaled):
    t = torch.tensor(teacher).view(1, 1, 3)
    s = torch.tensor(student).view(1, 1, 3)
    assert kl_per_token(s, t, temperature).item() == pytest.approx(kl, abs=1e-4)
    # alpha = 0: only the soft term, (1 - 0) * T^2 * KL
    loss = checks.reference_distill_loss(s, t, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1), temperature, 0.0)
    assert loss.item() == pytest.approx(scaled, abs=1e-4)


def test_distill_reference_equals_the_library_and_its_mistake_model():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.float)
    want = distill_loss(s, t, targets, mask, 2.5, 0.3)
    torch.testing.assert_close(checks.reference_distill_loss(s, t, targets, mask, 2.5, 0.3), want)
    torch.testing.assert_close(_distill(s, t, targets, mask, 2.5, 0.3).float(), want)  # no switch = the right loss
    # alpha = 1 is plain SFT: the masked cross-entropy
    ce = F.cross_entropy(s.reshape(-1, 7), targets.reshape(-1), reduction="none").view(2, 5)
    torch.testing.assert_close(checks.reference_distill_loss(s, t, targets, mask, 2.0, 1.0),
                               (ce * mask).sum() / mask.sum())


def test_render_reference_equals_the_template_and_tokenizes_tags_as_one_token():
    task = AdditionTask(3, 3)
    p = next(task.generate(1, seed=2))
    text = checks.reference_render_example(p.prompt, task.reasoning(p), p.answer)
    assert text == to_text(p.prompt, task.reference_completion(p, reasoning=True))
    ids, prompt_len = encode_example(TOK, *render(p.prompt, p.answer, task.reasoning(p)))
    assert TOK.encode(text) == ids
    assert TOK.decode(ids[:prompt_len]) == "<bos>" + p.prompt
    assert sum(TOK.itos[i].startswith("<") for i in ids) == 6  # bos, 4 tags, eos: one id each


# ------------------------------------------------- the references pass, stubs are not attempted
@pytest.mark.parametrize("check, reference", [
    (checks.check_sft_loss_mask, checks.reference_sft_loss_mask),
    (checks.check_distill_loss, checks.reference_distill_loss),
    (checks.check_render_example, checks.reference_render_example),
])
def test_reference_passes_and_stub_is_not_attempted(check, reference, capsys):
    assert_checker_basics(check, reference, "09", lambda: capsys.readouterr().out)


@pytest.mark.parametrize("check, library", [
    (checks.check_distill_loss, distill_loss),
    (checks.check_render_example, to_text),
])
def test_the_librarys_own_function_is_refused(check, library):
    result = check(library)
    assert result.status == FAIL and "library's own" in result.message


def test_the_checkers_own_references_are_refused():
    result = checks.check_sft_loss_mask(checks.reference_sft_loss_mask)
    assert result.status == FAIL and "library's own" in result.message


def test_checkers_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_sft_loss_mask(as_learner(checks.reference_sft_loss_mask))
    checks.check_distill_loss(as_learner(checks.reference_distill_loss))
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------- 09.1: known mistakes fail with their hint
@pytest.mark.parametrize("switches, hint", [(s, h.split(".")[0]) for s, h in _MASK_MISTAKES])
def test_sft_loss_mask_mistakes(switches, hint):
    result = checks.check_sft_loss_mask(lambda t, p, pad: _sft_mask(t, p, pad, eos_id=TOK.eos_id, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_each_mask_mistake_differs_from_the_right_mask_and_from_the_others_it_follows():
    # every mistake is visible on the first batch, and no mistake is hidden behind an earlier one
    targets, prompt_lens, pad_id, eos_id = _mask_cases()[0]
    right = _sft_mask(targets, prompt_lens, pad_id)
    variants = [_sft_mask(targets, prompt_lens, pad_id, eos_id=eos_id, **s) for s, _ in _MASK_MISTAKES]
    for i, v in enumerate(variants):
        assert not torch.equal(v, right), _MASK_MISTAKES[i][1]
        assert not any(torch.equal(v, w) for w in variants[:i]), _MASK_MISTAKES[i][1]


@pytest.mark.parametrize("right", [
    lambda t, p, pad: checks.reference_sft_loss_mask(t, p, pad).bool(),
    lambda t, p, pad: checks.reference_sft_loss_mask(t, p, pad).long(),
    lambda t, p, pad: checks.reference_sft_loss_mask(t, p, pad).double(),
    lambda t, p, pad: ((torch.arange(t.shape[1])[None] >= p[:, None] - 1) & (t != pad)).float(),
])
def test_sft_loss_mask_in_any_dtype_passes(right):
    assert checks.check_sft_loss_mask(right).status == PASS


def test_sft_loss_mask_with_one_column_per_token_is_refused():
    result = checks.check_sft_loss_mask(lambda t, p, pad: torch.zeros(t.shape[0], t.shape[1] + 1))
    assert result.status == FAIL and "T + 1" in result.message
    result = checks.check_sft_loss_mask(lambda t, p, pad: torch.zeros(t.shape[1]))
    assert result.status == FAIL and "shape" in result.message


def test_an_unknown_wrong_mask_shows_the_row():
    def wrong(t, p, pad):
        m = checks.reference_sft_loss_mask(t, p, pad).clone()
        m[1, -1] = 1.0 - m[1, -1]
        return m

    result = checks.check_sft_loss_mask(wrong)
    assert result.status == FAIL and "row 1 is" in result.message


def test_a_mask_written_into_targets_in_place_fails():
    def in_place(t, p, pad):
        out = checks.reference_sft_loss_mask(t, p, pad)
        t.zero_()
        return out

    result = checks.check_sft_loss_mask(in_place)
    assert result.status == FAIL and "in place" in result.message


# ------------------------------------------------- 09.2: known mistakes fail with their hint
@pytest.mark.parametrize("switches, hint", [(s, h.split(". Hint")[0]) for s, h in _DISTILL_MISTAKES])
def test_distill_loss_mistakes(switches, hint):
    result = checks.check_distill_loss(lambda *args: _distill(*args, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_each_distill_mistake_is_visible_on_the_first_case():
    from mlakit.course.checks.lesson09 import _close, _distill_cases

    s, t, targets, mask, T, alpha = _distill_cases()[0]
    assert T != 1 and alpha not in (0.5, 0.0, 1.0)  # T vs T^2, swapped alpha and both terms are all visible
    right = _distill(s, t, targets, mask, T, alpha)
    variants = [_distill(s, t, targets, mask, T, alpha, **sw) for sw, _ in _DISTILL_MISTAKES]
    for i, v in enumerate(variants):
        assert not _close(v, right), _DISTILL_MISTAKES[i][1]
        assert not any(_close(v, w) for w in variants[:i]), _DISTILL_MISTAKES[i][1]


def _by_hand(s, t, targets, mask, T, alpha):
    # the loss as a learner writes it, with F.kl_div
    V = s.shape[-1]
    log_q = F.log_softmax(s / T, dim=-1)
    p = F.softmax(t.detach() / T, dim=-1)
    kl = F.kl_div(log_q, p, reduction="none").sum(-1)  # (B, T)
    ce = F.cross_entropy(s.reshape(-1, V), targets.reshape(-1), reduction="none").view(targets.shape)
    m = mask.float()
    return alpha * (ce * m).sum() / m.sum() + (1 - alpha) * T**2 * (kl * m).sum() / m.sum()


@pytest.mark.parametrize("right", [
    _by_hand,
    lambda s, t, y, m, T, a: _by_hand(s.double(), t.double(), y, m, T, a),  # float64 is as right as float32
    lambda s, t, y, m, T, a: checks.reference_distill_loss(s, t, y, m.bool(), T, a),
])
def test_distill_loss_right_answers_pass(right):
    result = checks.check_distill_loss(right)
    assert result.status == PASS, result.message


def test_a_teacher_that_gets_a_gradient_fails():
    def not_detached(s, t, y, m, T, a):
        V = s.shape[-1]
        log_q, log_p = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)  # no detach
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        ce = F.cross_entropy(s.reshape(-1, V), y.reshape(-1), reduction="none").view(y.shape)
        return a * (ce * m).sum() / m.sum() + (1 - a) * T**2 * (kl * m).sum() / m.sum()

    result = checks.check_distill_loss(not_detached)
    assert result.status == FAIL and "teacher's logits receive a gradient" in result.message


@pytest.mark.parametrize("wrong, hint", [
    (lambda *a: checks.reference_distill_loss(*a).detach(), "no gradient"),
    (lambda *a: checks.reference_distill_loss(*a).item(), "scalar torch.Tensor"),
    (lambda s, t, y, m, T, a: kl_per_token(s, t, T), "expected a scalar"),
])
def test_distill_loss_must_be_a_differentiable_scalar(wrong, hint):
    result = checks.check_distill_loss(wrong)
    assert result.status == FAIL and hint in result.message, result.message


def test_an_unknown_wrong_distill_loss_gets_the_general_hint():
    result = checks.check_distill_loss(lambda *a: checks.reference_distill_loss(*a) + 0.5)
    assert result.status == FAIL and "expected" in result.message and "alpha * CE" in result.message


# ------------------------------------------------- 09.3: known mistakes fail with their hint
@pytest.mark.parametrize("switches, hint", [(s, h.split(". Hint")[0]) for s, h in _RENDER_MISTAKES])
def test_render_example_mistakes(switches, hint):
    result = checks.check_render_example(lambda *args: _render(*args, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_render_example_boundary_cases():
    # the empty-think mistake only shows on the example without reasoning: it is among the cases
    from mlakit.course.checks.lesson09 import _RENDER_CASES

    assert any(r == "" for _, r, _ in _RENDER_CASES)
    assert any(r != "" for _, r, _ in _RENDER_CASES)
    assert _render("1+1=", "", "2") == "<bos>1+1=<think></think><answer>2</answer><eos>"


@pytest.mark.parametrize("wrong, hint", [
    (lambda p, r, a: render(p, a, r), "return one string"),
    (lambda p, r, a: None, "return a string"),
    (lambda p, r, a: checks.reference_render_example(p, r, a).replace("+", "-"), "differs from the template"),
])
def test_render_example_type_and_general_hints(wrong, hint):
    result = checks.check_render_example(wrong)
    assert result.status == FAIL and hint in result.message, result.message


def test_render_example_by_hand_passes():
    def by_hand(prompt, reasoning, answer):
        return f"<bos>{prompt}<think>{reasoning}</think><answer>{answer}</answer><eos>"

    assert checks.check_render_example(by_hand).status == PASS
