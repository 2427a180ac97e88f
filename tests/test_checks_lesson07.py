"""Lesson 07 checkers: the references equal the library, known-wrong answers fail with their hint, stubs are not
attempted."""

import math

import pytest
import torch
from learner import assert_checker_basics, assert_in_place_change_fails

from mlakit import ModelConfig
from mlakit.course import checks
from mlakit.course.checks import FAIL, PASS
from mlakit.course.checks.lesson07 import _completion_mask, _lr, _mtp_input
from mlakit.data import AdditionTask, LMBatches, encode_problems
from mlakit.losses import pretrain_loss
from mlakit.model import MiniDeepSeek
from mlakit.tokenizer import CharTokenizer
from mlakit.train import TrainConfig, lr_at

TOK = CharTokenizer()
TINY = ModelConfig.from_preset("nano", vocab_size=TOK.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                               qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64, moe_intermediate_size=16,
                               max_position_embeddings=48)



def _batch():
    problems = list(AdditionTask(1, 2).generate(6, seed=3))
    return LMBatches(encode_problems(problems, TOK), batch_size=6, pad_id=TOK.pad_id).collate(
        encode_problems(problems, TOK))


# ------------------------------------------------- references against the library
def test_mtp_references_give_the_models_mtp_logits_and_loss():
    torch.manual_seed(0)
    model = MiniDeepSeek(TINY).eval()
    batch = _batch()
    with torch.no_grad():
        result = pretrain_loss(model, batch)
        out = result.output
        h = model.hidden_states(batch["input_ids"])  # (B, T, d)
        mtp = model.mtp[0]
        x = checks.reference_mtp_input(h, batch["input_ids"], model.embed_tokens, mtp.enorm, mtp.hnorm, mtp.eh_proj)
        logits = model.lm_head(mtp.shared_head_norm(mtp.block(x)))  # (B, T - 1, vocab)
    torch.testing.assert_close(logits, out.mtp_logits[0])
    loss = checks.reference_mtp_loss(out.mtp_logits[0], batch["targets"], batch["loss_mask"])
    torch.testing.assert_close(TINY.mtp_loss_weight * loss, result.parts["mtp"])


def test_completion_mask_reference_equals_lm_batches():
    examples = encode_problems(list(AdditionTask(1, 2).generate(8, seed=5)), TOK)
    batch = LMBatches(examples, batch_size=8, pad_id=TOK.pad_id).collate(examples)
    width = batch["input_ids"].shape[1] + 1
    for row, (ids, prompt_len) in enumerate(examples):
        assert torch.equal(checks.reference_completion_mask(prompt_len, len(ids), width), batch["loss_mask"][row])


@pytest.mark.parametrize("steps, lr, warmup, ratio", [(300, 3e-3, 30, 0.1), (10, 1.0, 0, 0.0), (7, 0.5, 7, 0.3)])
def test_lr_reference_equals_lr_at(steps, lr, warmup, ratio):
    cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=warmup, min_lr_ratio=ratio)
    for step in range(steps + 3):
        assert math.isclose(checks.reference_lr_schedule(step, steps, lr, warmup, ratio), lr_at(step, cfg))


# ------------------------------------------------- the references pass, stubs are not attempted
@pytest.mark.parametrize("check, reference", [
    (checks.check_mtp_input, checks.reference_mtp_input),
    (checks.check_mtp_loss, checks.reference_mtp_loss),
    (checks.check_completion_mask, checks.reference_completion_mask),
    (checks.check_lr_schedule, checks.reference_lr_schedule),
])
def test_reference_passes_and_stub_is_not_attempted(check, reference, capsys):
    assert_checker_basics(check, reference, "07", lambda: capsys.readouterr().out)


def test_checkers_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_mtp_input(checks.reference_mtp_input)
    checks.check_mtp_loss(checks.reference_mtp_loss)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------- known mistakes fail with their hint
@pytest.mark.parametrize("switches, hint", [
    (dict(hidden_first=True), "hidden half comes first"),
    (dict(shift="none"), "embedding of t_i"),
    (dict(shift="backwards"), "wrong way"),
    (dict(swap_norms=True), "norms are swapped"),
    (dict(use_enorm=False, use_hnorm=False), "neither half is normalised"),
    (dict(use_enorm=False), "embedding is not normalised"),
    (dict(use_hnorm=False), "hidden state is not normalised"),
    (dict(hidden_first=True, use_enorm=False, use_hnorm=False), "hidden half comes first and neither half"),
])
def test_mtp_input_mistakes(switches, hint):
    result = checks.check_mtp_input(lambda *args: _mtp_input(*args, **switches))
    assert result.status == FAIL and hint in result.message


def test_mtp_input_in_float64_passes():
    def in_float64(h, ids, embed, enorm, hnorm, eh_proj):
        return checks.reference_mtp_input(h, ids, embed, enorm, hnorm, eh_proj).double()

    assert checks.check_mtp_input(in_float64).status == PASS


def test_mtp_input_shape_mistakes():
    def all_positions(h, ids, embed, enorm, hnorm, eh_proj):
        return eh_proj(torch.cat([enorm(embed(ids)), hnorm(h)], dim=-1))  # (B, T, d): no shift, no drop

    def not_projected(h, ids, embed, enorm, hnorm, eh_proj):
        return torch.cat([enorm(embed(ids[:, 1:])), hnorm(h[:, :-1])], dim=-1)  # (B, T - 1, 2d)

    result = checks.check_mtp_input(all_positions)
    assert result.status == FAIL and "T - 1" in result.message
    result = checks.check_mtp_input(not_projected)
    assert result.status == FAIL and "eh_proj" in result.message


def _mtp_ce(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             reduction="none").view(targets.shape)


@pytest.mark.parametrize("wrong, hint", [
    (lambda lg, t, m: (_mtp_ce(lg, t[:, :-1]) * m[:, :-1]).sum() / m[:, :-1].sum(), "off by one"),
    (lambda lg, t, m: (_mtp_ce(lg, t[:, :-1]) * m[:, 1:]).sum() / m[:, 1:].sum(), "not shifted (t_(i+1)"),
    (lambda lg, t, m: _mtp_ce(lg, t[:, 1:]).mean(), "every position counts"),
    (lambda lg, t, m: (_mtp_ce(lg, t[:, 1:]) * m[:, :-1]).sum() / m[:, :-1].sum(), "mask is not shifted"),
    (lambda lg, t, m: (_mtp_ce(lg, t[:, 1:]) * m[:, 1:]).sum(), "sum over the counted"),
    (lambda lg, t, m: ((_mtp_ce(lg, t[:, 1:]) * m[:, 1:]).sum(1) / m[:, 1:].sum(1)).mean(), "per-sequence means"),
    (lambda lg, t, m: 0.3 * checks.reference_mtp_loss(lg, t, m), "lambda"),
    (lambda lg, t, m: (_mtp_ce(lg, t[:, 1:]) * m[:, 1:]).sum() / m.sum(), "divided by loss_mask.sum()"),
])
def test_mtp_loss_mistakes(wrong, hint):
    result = checks.check_mtp_loss(wrong)
    assert result.status == FAIL and hint in result.message, result.message


@pytest.mark.parametrize("right", [
    lambda lg, t, m: checks.reference_mtp_loss(lg.double(), t, m),
    lambda lg, t, m: (_mtp_ce(lg.double(), t[:, 1:]) * m[:, 1:]).sum() / m[:, 1:].sum(),
])
def test_mtp_loss_in_float64_passes(right):
    result = checks.check_mtp_loss(right)
    assert result.status == PASS, result.message


def test_mtp_loss_checks_a_mask_that_counts_target_0():
    # with completion_only=False every real target counts, target 0 included: loss_mask.sum() is then one
    # more per row than the head's count, loss_mask[:, 1:].sum()
    batch = LMBatches(encode_problems(list(AdditionTask(1, 2).generate(4, seed=1)), TOK), batch_size=4,
                      pad_id=TOK.pad_id, completion_only=False)
    mask = batch.collate(batch.examples)["loss_mask"]
    assert bool(mask[:, 0].all())
    result = checks.check_mtp_loss(lambda lg, t, m: (_mtp_ce(lg, t[:, 1:]) * m[:, 1:]).sum() / m.sum())
    assert result.status == FAIL and "loss_mask[:, 1:].sum()" in result.message


def test_mtp_loss_must_be_a_scalar_tensor():
    result = checks.check_mtp_loss(lambda lg, t, m: float(checks.reference_mtp_loss(lg, t, m)))
    assert result.status == FAIL and "scalar torch.Tensor" in result.message
    result = checks.check_mtp_loss(lambda lg, t, m: _mtp_ce(lg, t[:, 1:]) * m[:, 1:])
    assert result.status == FAIL and "expected a scalar" in result.message


@pytest.mark.parametrize("kwargs, hint", [
    (dict(first="p"), "first completion token is not counted"),
    (dict(first=0), "prompt counts too"),
    (dict(end="n-2"), "final <eos> is not counted"),
    (dict(end="n"), "padding token is counted"),
    (dict(end="w-1"), "padding counts"),
    (dict(first=1), "prompt counts too"),
    (dict(first="p", end="n"), "one position late"),
])
def test_completion_mask_mistakes(kwargs, hint):
    def wrong(p, n, w):
        first = {"p": p, 0: 0, 1: 1}.get(kwargs.get("first"))
        end = {"n-2": n - 2, "n": n, "w-1": w - 1}.get(kwargs.get("end"))
        return _completion_mask(p, n, w, first=first, end=end)

    result = checks.check_completion_mask(wrong)
    assert result.status == FAIL and hint in result.message, result.message


def test_completion_mask_with_one_entry_per_token_is_refused():
    result = checks.check_completion_mask(lambda p, n, w: torch.zeros(w))
    assert result.status == FAIL and "width - 1" in result.message
    result = checks.check_completion_mask(lambda p, n, w: checks.reference_completion_mask(p, n, w).bool())
    assert result.status == PASS  # a boolean mask is fine


@pytest.mark.parametrize("switches, hint", [
    (dict(warmup="none"), "no warmup"),
    (dict(warmup="step"), "learning rate of 0"),
    (dict(floor=False), "decays to 0 instead of the floor"),
    (dict(decay="linear"), "linear"),
    (dict(span="whole_run"), "starts counting at step 0"),
    (dict(floor=False, warmup="none"), "no warmup, and the cosine decays to 0"),
])
def test_lr_schedule_mistakes(switches, hint):
    result = checks.check_lr_schedule(lambda *args: _lr(*args, **switches))
    assert result.status == FAIL and hint in result.message, result.message


def test_lr_at_of_the_library_is_refused():
    # mlakit.train.lr_at(step, config) has another signature than lr_schedule(step, steps, lr, warmup_steps,
    # min_lr_ratio), but handed in as it is, it is refused as the library's own before it is ever called
    result = checks.check_lr_schedule(lr_at)
    assert result.status == FAIL and "library's own `mlakit.train.lr_at`" in result.message


def test_lr_schedule_must_return_a_number():
    result = checks.check_lr_schedule(lambda *args: str(checks.reference_lr_schedule(*args)))
    assert result.status == FAIL and "return a float" in result.message
    result = checks.check_lr_schedule(lambda *args: torch.tensor(checks.reference_lr_schedule(*args)))
    assert result.status == PASS


# ---------------------------------------------------------------- in-place changes of the inputs
@pytest.mark.parametrize("check, reference, arg, name", [
    ("check_mtp_input", "reference_mtp_input", 1, "input_ids"),
    ("check_mtp_loss", "reference_mtp_loss", 2, "loss_mask"),
])
def test_an_answer_that_changes_its_input_in_place_fails(check, reference, arg, name):
    assert_in_place_change_fails(checks, check, reference, arg, name)
