"""Offline logit distillation: TeacherLogits gives the teacher's own logits where the loss counts, and distill with
cache_teacher_logits=True trains exactly as with a teacher pass per step."""

import pytest
import torch

from mlakit import ModelConfig
from mlakit.data import AdditionTask, LMBatches, Record, encode_records
from mlakit.model import MiniDeepSeek
from mlakit.recipes.sft import TeacherLogits, distill
from mlakit.tokenizer import CharTokenizer
from mlakit.train import TrainConfig

TOK = CharTokenizer()
TINY = ModelConfig.from_preset("nano", vocab_size=TOK.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                               qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64, moe_intermediate_size=16,
                               max_position_embeddings=48)
TASK = AdditionTask(1, 3)

pytestmark = pytest.mark.usefixtures("one_thread")


def _records(n=24, seed=1):
    # both layouts, plain answers and R1's format, so the rows of a batch have different lengths
    return [Record(f"r{i}", "addition", p.prompt, TASK.reference_completion(p, reasoning=i % 2 == 0), p.answer)
            for i, p in enumerate(TASK.generate(n, seed=seed))]


def _teacher(seed=0):
    torch.manual_seed(seed)
    return MiniDeepSeek(TINY).eval()


def test_the_table_holds_the_teachers_logits_where_the_loss_counts():
    teacher = _teacher()
    examples = encode_records(_records(), TOK)
    table = TeacherLogits(teacher, examples + examples[:3], TOK.pad_id, TOK.eos_id, batch_size=5)
    assert len(table) == len(examples)  # one entry per distinct example
    for step in range(3):
        batch = LMBatches(examples, 12, TOK.pad_id, seed=step)(step)
        with torch.no_grad():
            want = teacher(batch["input_ids"]).logits  # (B, T, vocab)
        got = table(batch["input_ids"])
        assert got.shape == want.shape
        counted = batch["loss_mask"].bool()
        torch.testing.assert_close(got[counted], want[counted])
        real = batch["input_ids"] != TOK.pad_id  # every real token but a final eos is in the table
        ends_in_eos = batch["input_ids"] == TOK.eos_id
        torch.testing.assert_close(got[real & ~ends_in_eos], want[real & ~ends_in_eos])
        assert not got[~real].any()  # padding: zeros, which the mask leaves out


def test_rows_outside_the_table_go_through_the_teacher():
    teacher = _teacher()
    examples = encode_records(_records(), TOK)
    table = TeacherLogits(teacher, examples[:4], TOK.pad_id, TOK.eos_id)
    batch = LMBatches(examples[2:8], 6, TOK.pad_id).collate(examples[2:8])  # 2 rows in the table, 4 not
    with torch.no_grad():
        want = teacher(batch["input_ids"]).logits
    got = table(batch["input_ids"])
    counted = batch["loss_mask"].bool()
    torch.testing.assert_close(got[counted], want[counted])
    torch.testing.assert_close(got[2:], want[2:])  # unseen rows: the teacher's output as it is


def test_distill_with_cached_logits_trains_as_with_the_teacher():
    teacher = _teacher()
    records = _records()
    cfg = TrainConfig(steps=5, lr=1e-2, warmup_steps=1, eval_every=0)
    live = distill(TINY, teacher, records, TOK, cfg, batch_size=8, seed=3)
    cached = distill(TINY, teacher, records, TOK, cfg, batch_size=8, seed=3, cache_teacher_logits=True)
    for a, b in zip(live.trainer.history, cached.trainer.history, strict=True):
        assert a["loss_kl"] == pytest.approx(b["loss_kl"], rel=1e-5, abs=1e-7)
        assert a["loss_ce"] == pytest.approx(b["loss_ce"], rel=1e-5, abs=1e-7)
    assert cached.teacher is teacher  # the run keeps the model, not the table
    assert all(not p.requires_grad or p.grad is None for p in teacher.parameters())
