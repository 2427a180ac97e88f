"""Logit distillation (Hinton et al. 2015) against hand-computed values, and the distill recipe over the Trainer."""

import math

import pytest
import torch

from mlakit import ModelConfig
from mlakit.data import AdditionTask, Record
from mlakit.losses import distill_loss, distill_loss_fn, kl_per_token, lm_loss
from mlakit.model import MiniDeepSeek
from mlakit.recipes import distill, sft
from mlakit.tokenizer import CharTokenizer
from mlakit.train import TrainConfig

TOK = CharTokenizer()
TINY = ModelConfig.from_preset("nano", vocab_size=TOK.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                               qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64, moe_intermediate_size=16,
                               max_position_embeddings=48)

pytestmark = pytest.mark.usefixtures("one_thread")

TEACHER = torch.tensor([[[2.0, 1.0, 0.0]]])  # (1, 1, 3): REFERENCE.md's check values
STUDENT = torch.tensor([[[1.0, 1.0, 0.0]]])
TARGET = torch.tensor([[0]])


def _softmax(xs):
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_kl_of_a_distribution_with_itself_is_zero():
    logits = torch.randn(2, 5, 11) * 3
    assert kl_per_token(logits, logits.clone(), temperature=1.0).abs().max() < 1e-6
    assert kl_per_token(logits, logits.clone(), temperature=3.0).abs().max() < 1e-6
    targets = torch.randint(0, 11, (2, 5))
    assert distill_loss(logits, logits.clone(), targets, alpha=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_one_is_the_cross_entropy():
    # student [1, 1, 0], target 0: -log(e / (2e + 1)) = log(2e + 1) - 1, whatever the teacher says
    ce = math.log(2 * math.e + 1) - 1
    assert ce == pytest.approx(0.8620, abs=5e-5)
    assert distill_loss(STUDENT, TEACHER, TARGET, alpha=1.0).item() == pytest.approx(ce, rel=1e-6)
    assert distill_loss(STUDENT, TEACHER * 50, TARGET, alpha=1.0, temperature=7.0).item() == pytest.approx(ce, rel=1e-6)
    logits, teacher = torch.randn(3, 4, 9), torch.randn(3, 4, 9)
    targets, mask = torch.randint(0, 9, (3, 4)), torch.rand(3, 4) > 0.3
    torch.testing.assert_close(distill_loss(logits, teacher, targets, mask, alpha=1.0), lm_loss(logits, targets, mask))


def test_temperature_squared_scaling_against_the_hand_computed_values():
    p1, q1 = _softmax([2, 1, 0]), _softmax([1, 1, 0])
    assert _kl(p1, q1) == pytest.approx(0.1196, abs=5e-5)
    p2, q2 = _softmax([1, 0.5, 0]), _softmax([0.5, 0.5, 0])  # the logits divided by T = 2
    assert _kl(p2, q2) == pytest.approx(0.0310, abs=5e-5)
    # the library against REFERENCE.md's numbers
    assert kl_per_token(STUDENT, TEACHER, 1.0).item() == pytest.approx(0.1196, abs=5e-5)
    assert kl_per_token(STUDENT, TEACHER, 2.0).item() == pytest.approx(0.0310, abs=5e-5)
    assert distill_loss(STUDENT, TEACHER, TARGET, temperature=2.0, alpha=0.0).item() == pytest.approx(0.1240, abs=5e-5)
    assert distill_loss(STUDENT, TEACHER, TARGET, temperature=1.0, alpha=0.0).item() == pytest.approx(0.1196, abs=5e-5)
    # alpha = 0.5 at T = 2: half the cross-entropy (at T = 1) plus half of T^2 KL
    ce = math.log(2 * math.e + 1) - 1
    expected = 0.5 * ce + 0.5 * 4 * _kl(p2, q2)
    assert distill_loss(STUDENT, TEACHER, TARGET).item() == pytest.approx(expected, rel=1e-5)  # the defaults
    # the T^2 keeps the gradient on scale: d(T^2 KL)/d(student logits) = T (q_T - p_T)
    student = STUDENT.clone().requires_grad_(True)
    distill_loss(student, TEACHER, TARGET, temperature=2.0, alpha=0.0).backward()
    by_hand = torch.tensor([[[2 * (q - p) for p, q in zip(p2, q2, strict=True)]]])
    torch.testing.assert_close(student.grad, by_hand)


def test_masking_averages_over_the_masked_tokens_only():
    teacher = torch.tensor([[[2.0, 1.0, 0.0], [10.0, 0.0, 0.0]]])  # (1, 2, 3)
    student = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 10.0]]])  # the second position is far off
    targets = torch.tensor([[0, 0]])
    ce0, kl0 = math.log(2 * math.e + 1) - 1, _kl(_softmax([2, 1, 0]), _softmax([1, 1, 0]))
    mask = torch.tensor([[True, False]])
    assert distill_loss(student, teacher, targets, mask, temperature=1.0, alpha=0.0).item() == pytest.approx(kl0, rel=1e-5)
    assert distill_loss(student, teacher, targets, mask, temperature=1.0, alpha=0.5).item() == pytest.approx(
        0.5 * ce0 + 0.5 * kl0, rel=1e-5)
    kl1 = _kl(_softmax([10, 0, 0]), _softmax([0, 0, 10]))
    both = distill_loss(student, teacher, targets, temperature=1.0, alpha=0.0).item()
    assert both == pytest.approx((kl0 + kl1) / 2, rel=1e-5)  # no mask: the mean over both positions
    ones = torch.ones(1, 2, dtype=torch.bool)
    assert distill_loss(student, teacher, targets, ones, temperature=1.0, alpha=0.0).item() == pytest.approx(both)


def test_the_gradient_reaches_the_student_only():
    student = torch.randn(2, 3, 7, requires_grad=True)
    teacher = torch.randn(2, 3, 7, requires_grad=True)
    distill_loss(student, teacher, torch.randint(0, 7, (2, 3)), alpha=0.3).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"student logits \(1, 1, 3\) and teacher logits \(1, 1, 4\) differ"):
        distill_loss(STUDENT, torch.zeros(1, 1, 4), TARGET)
    with pytest.raises(ValueError, match="alpha=1.5 is invalid"):
        distill_loss(STUDENT, TEACHER, TARGET, alpha=1.5)
    with pytest.raises(ValueError, match="temperature=0 is invalid"):
        distill_loss(STUDENT, TEACHER, TARGET, temperature=0)


def _records(n=16):
    task = AdditionTask(1, 1)
    out = []
    for i, p in enumerate(task.generate(n, seed=0)):
        out.append(Record(f"add-{i}", "addition", p.prompt, task.reference_completion(p, reasoning=True), p.answer,
                          problem=p))
    return out


def test_distill_loss_fn_runs_a_frozen_teacher():
    torch.manual_seed(0)
    student, teacher = MiniDeepSeek(TINY), MiniDeepSeek(TINY.replace(attention_dropout=0.5))
    teacher.train()
    student.train()
    from mlakit.data import LMBatches, encode_records

    batch = LMBatches(encode_records(_records(4), TOK), 4, TOK.pad_id)(0)
    out = distill_loss_fn(teacher, temperature=2.0, alpha=0.25)(student, batch)
    assert not teacher.training  # eval mode: dropout off, the same logits every call
    assert set(out.parts) == {"ce", "kl", "balance"}
    with torch.no_grad():
        t_logits = teacher(batch["input_ids"]).logits
    expected = distill_loss(out.output.logits, t_logits, batch["targets"], batch["loss_mask"], 2.0, 0.25)
    torch.testing.assert_close(out.parts["ce"] + out.parts["kl"], expected)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_distill_recipe_trains_the_student_and_leaves_the_teacher_alone():
    torch.manual_seed(1)
    teacher = MiniDeepSeek(TINY)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = TrainConfig(steps=6, lr=3e-3, warmup_steps=1, eval_every=0)
    run = distill(TINY, teacher, _records(), TOK, cfg, temperature=2.0, alpha=0.5, batch_size=4)
    assert run.teacher is teacher and len(run.trainer.history) == 6
    assert {"loss_ce", "loss_kl"} <= set(run.trainer.history[0])
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the balancing bias included
    assert not teacher.training
    # alpha = 1 ignores the teacher: the same losses as with any other teacher
    other = MiniDeepSeek(TINY)
    a = distill(TINY, teacher, _records(), TOK, TrainConfig(steps=2, eval_every=0), alpha=1.0, batch_size=4)
    b = distill(TINY, other, _records(), TOK, TrainConfig(steps=2, eval_every=0), alpha=1.0, batch_size=4)
    assert [r["loss"] for r in a.trainer.history] == [r["loss"] for r in b.trainer.history]


def test_distill_refuses_a_teacher_with_another_vocabulary():
    cfg = TrainConfig(steps=1, eval_every=0)
    bigger = MiniDeepSeek(TINY.replace(vocab_size=TOK.vocab_size + 8))
    with pytest.raises(ValueError, match=r"teacher's vocabulary \(66 tokens\) differs from the student's \(58\)"):
        distill(TINY, bigger, _records(), TOK, cfg)
    other_tok = CharTokenizer(alphabet=TOK.alphabet[::-1])  # the same characters, other ids
    assert other_tok.vocab_size == TOK.vocab_size
    with pytest.raises(ValueError, match=r"teacher's tokenizer differs from the student's: id 7 is 'z' for the "
                                         r"teacher and '0' for the student"):
        distill(TINY, MiniDeepSeek(TINY), _records(), TOK, cfg, teacher_tokenizer=other_tok)
    student = MiniDeepSeek(TINY)
    with pytest.raises(ValueError, match="the teacher is the student"):
        distill(student, student, _records(), TOK, cfg)


def test_sequence_level_data_with_the_logit_loss_is_distill_on_the_teachers_records(tmp_path):
    from mlakit.data import write_jsonl

    records = _records(8)
    for r in records:
        r.source = "teacher"
    path = write_jsonl(tmp_path / "teacher.jsonl", records)
    torch.manual_seed(0)
    teacher = MiniDeepSeek(TINY)
    cfg = TrainConfig(steps=2, eval_every=0)
    from_file = distill(TINY, teacher, path, TOK, cfg, batch_size=4)
    in_memory = distill(TINY, teacher, records, TOK, cfg, batch_size=4)
    assert [r["loss"] for r in from_file.trainer.history] == [r["loss"] for r in in_memory.trainer.history]
    assert len(sft(TINY, path, TOK, cfg, batch_size=4).trainer.history) == 2
