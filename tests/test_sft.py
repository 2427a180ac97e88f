"""SFT through the one Trainer: completion-only learning, exact resume, teacher records, bad input named."""

import json

import pytest
import torch

from mlakit import ModelConfig
from mlakit.data import AdditionTask, JSONLError, Record, RejectionResult, Sample, write_jsonl
from mlakit.model import MiniDeepSeek
from mlakit.recipes import SFTRun, answer_verifier, distill, records_from_rejection, sft, sft_eval
from mlakit.tokenizer import CharTokenizer
from mlakit.train import TrainConfig

TOK = CharTokenizer()
TINY = ModelConfig.from_preset("nano", vocab_size=TOK.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                               qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64, moe_intermediate_size=16,
                               max_position_embeddings=48)
TASK = AdditionTask(1, 1)

pytestmark = pytest.mark.usefixtures("one_thread")


def _records(n=16, seed=0, reasoning=True):
    return [Record(f"add-{seed}-{i}", "addition", p.prompt, TASK.reference_completion(p, reasoning), p.answer,
                   problem=p) for i, p in enumerate(TASK.generate(n, seed=seed))]


def test_sft_learns_the_completion_in_r1s_format():
    cfg = TrainConfig(steps=20, lr=1e-2, warmup_steps=3, eval_every=0)
    run = sft(TINY, _records(), TOK, cfg, batch_size=8)
    assert isinstance(run, SFTRun) and run.model is run.trainer.model and len(run.trainer.history) == 20
    history = run.trainer.history
    assert {"loss_main", "loss_mtp", "loss_balance", "max_vio"} <= set(history[0])
    assert history[-1]["loss_main"] < 0.5 * history[0]["loss_main"]


def test_sft_eval_reads_the_tags_and_memorises_one_record():
    record = Record("one", "addition", "3+4=", "<think>3+4=7</think><answer>7</answer>", "7")
    cfg = TrainConfig(steps=60, lr=1e-2, warmup_steps=2, eval_every=30)
    run = sft(TINY, [record], TOK, cfg, batch_size=4, eval_records=[record])
    assert [e["step"] for e in run.trainer.evals] == [30, 60]
    assert run.trainer.evals[-1]["exact_match"] == 1.0
    result = run.exact_match([record])
    assert result["samples"][0] == ("3+4=", "<think>3+4=7</think><answer>7</answer>", True)  # tags written out


def test_answer_verifier_strict_reader_or_the_task():
    record = _records(1)[0]
    p = record.problem
    right = f"<think>x</think><answer>{p.answer}</answer>"
    assert answer_verifier()(record, right) and answer_verifier(TASK)(record, right)
    assert not answer_verifier()(record, f"<answer>{p.answer}</answer><answer>{p.answer}</answer>")  # a hedge
    assert answer_verifier()(record, p.answer)  # the plain format
    from_jsonl = Record.from_dict(record.to_dict())  # no problem object: the reference answer decides
    assert from_jsonl.problem is None and answer_verifier(TASK)(from_jsonl, right)
    assert not answer_verifier(TASK)(from_jsonl, "<answer>99</answer>")


@pytest.mark.parametrize("recipe", ["sft", "distill"])
def test_resuming_sft_gives_the_weights_of_an_uninterrupted_run(recipe, tmp_path):
    torch.manual_seed(5)
    teacher = MiniDeepSeek(TINY)

    def run(**kw):
        cfg = TrainConfig(steps=8, lr=3e-3, warmup_steps=2, eval_every=0)
        if recipe == "sft":
            return sft(TINY, _records(), TOK, cfg, batch_size=4, seed=3, **kw)
        return distill(TINY, teacher, _records(), TOK, cfg, batch_size=4, seed=3, **kw)

    full = run()
    first = run(steps=4)
    assert first.trainer.step == 4
    folder = first.trainer.save(tmp_path / "ckpt")
    torch.manual_seed(123)  # a different process state must not matter
    second = run(resume_from=folder)
    assert second.trainer.step == 8
    assert [r["loss"] for r in second.trainer.history] == [r["loss"] for r in full.trainer.history]
    fa, fb = full.model.state_dict(), second.model.state_dict()
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def test_records_from_rejection_keep_the_verified_samples_only():
    problems = [p for p in TASK.generate(2, seed=1)]
    good = [f"<think>{p.steps()}</think><answer>{p.answer}</answer>" for p in problems]
    samples = [Sample(problems[0], "<answer>0</answer>", False, True, 0), Sample(problems[0], good[0], True, True, 1),
               Sample(problems[1], good[1], True, True, 0), Sample(problems[1], "<think>", False, False, 1)]
    result = RejectionResult(samples, [samples[1], samples[2]], num_samples=2, mode="first",
                             difficulties=[TASK.difficulty(p) for p in problems])
    records = records_from_rejection(result, TASK, seed=1)
    assert [r.completion for r in records] == good
    assert [r.meta["sample"] for r in records] == [1, 0]
    assert all(r.source == "teacher" and r.task == "addition" and r.meta["difficulty"] == 1 for r in records)
    assert [r.answer for r in records] == [p.answer for p in problems]
    assert len({r.id for r in records}) == 2
    run = sft(TINY, result, TOK, TrainConfig(steps=2, eval_every=0), batch_size=2, task=TASK)  # straight from it
    assert [r.completion for r in run.records] == good
    empty = RejectionResult(samples, [], num_samples=2, mode="first", difficulties=[1, 1])
    with pytest.raises(ValueError, match=r"kept no sample \(acceptance 50.0% of 4 samples\)"):
        records_from_rejection(empty, TASK)


def test_sft_refuses_bad_input_naming_the_record(tmp_path):
    cfg = TrainConfig(steps=1, eval_every=0)
    records = _records(3)
    records[1].completion = ""
    with pytest.raises(ValueError, match=r"record 'add-0-1' \(#1\) has no completion"):
        sft(TINY, records, TOK, cfg)
    long = Record("too-long", "addition", "1+2=", "<think>" + "1+2=3," * 8 + "</think><answer>3</answer>", "3")
    with pytest.raises(ValueError, match=r"record 'too-long' \(#1\) is 59 tokens long .* context of 48 positions "
                                         r"\(max_position_embeddings\)"):
        sft(TINY, [_records(1)[0], long], TOK, cfg)
    with pytest.raises(ValueError, match="the tokenizer has 58 tokens but the model's vocab_size is 40"):
        sft(TINY.replace(vocab_size=40), _records(2), TOK, cfg)
    with pytest.raises(ValueError, match="no records"):
        sft(TINY, [], TOK, cfg)
    with pytest.raises(ValueError, match=r"record #0: missing field 'completion'"):
        sft(TINY, [{"id": "x", "task": "addition", "prompt": "1+2=", "answer": "3", "source": "generator",
                    "meta": {}}], TOK, cfg)
    path = write_jsonl(tmp_path / "sft.jsonl", _records(2))
    lines = path.read_text().splitlines()
    broken = json.loads(lines[1])
    del broken["completion"]
    path.write_text(lines[0] + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(JSONLError, match=r"sft.jsonl, line 2: missing field 'completion'"):
        sft(TINY, path, TOK, cfg)


def test_sft_fine_tunes_a_given_model_in_place():
    torch.manual_seed(0)
    model = MiniDeepSeek(TINY)
    before = model.embed_tokens.weight.detach().clone()
    run = sft(model, _records(4), TOK, TrainConfig(steps=2, eval_every=0), batch_size=2,
              eval_fn=sft_eval(TOK, _records(2, seed=9), TASK))
    assert run.model is model and not torch.equal(model.embed_tokens.weight, before)
    assert 0.0 <= run.trainer.evals[-1]["exact_match"] <= 1.0
