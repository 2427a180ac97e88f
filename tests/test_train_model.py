import csv
import json

import pytest
import torch

from mlakit import ModelConfig
from mlakit.data import AdditionTask, LMBatches, encode_problems, make_splits
from mlakit.losses import pretrain_loss
from mlakit.model import MiniDeepSeek, ModelOutput
from mlakit.moe import iter_moe_layers
from mlakit.tokenizer import CharTokenizer
from mlakit.train import (
    TrainConfig,
    Trainer,
    exact_match,
    load_model_from_checkpoint,
    lr_at,
    save_checkpoint,
)

TOK = CharTokenizer()
TINY = ModelConfig.from_preset("nano", vocab_size=TOK.vocab_size, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                               qk_rope_head_dim=8, v_head_dim=8, intermediate_size=64, moe_intermediate_size=16,
                               max_position_embeddings=48)


pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(seed=0):
    splits = make_splits(AdditionTask(1, 2).all_problems(), seed=0)
    return LMBatches(encode_problems(splits["train"], TOK), batch_size=8, pad_id=TOK.pad_id, seed=seed), splits


def test_deepseek_v3_and_v2_parameter_counts_on_the_meta_device():
    with torch.device("meta"):
        v3 = MiniDeepSeek(ModelConfig.from_preset("deepseek-v3"))
        v2 = MiniDeepSeek(ModelConfig.from_preset("deepseek-v2"))
    assert v3.num_parameters() == pytest.approx(671e9, rel=0.01)
    assert v3.num_parameters(active=True) == pytest.approx(37e9, rel=0.02)  # embedding and head counted as active
    assert v2.num_parameters() == pytest.approx(236e9, rel=0.01)
    assert v2.num_parameters(active=True) == pytest.approx(21e9, rel=0.02)
    assert v3.num_parameters(include_mtp=True) > v3.num_parameters()  # the MTP block is counted only when asked


def test_pretrain_loss_composes_the_parts_from_one_model_output():
    torch.manual_seed(0)
    model = MiniDeepSeek(TINY)
    batch = _batches()[0](0)
    plain = model(batch["input_ids"])
    assert isinstance(plain, ModelOutput) and plain.hidden_states is None
    assert plain.mtp_logits == [] and plain.routing == []  # only on request
    result = pretrain_loss(model, batch)
    out, parts = result.output, result.parts
    assert set(parts) == {"main", "mtp", "balance"}
    torch.testing.assert_close(result.loss, sum(parts.values()))
    torch.testing.assert_close(out.logits, plain.logits)
    T = batch["input_ids"].shape[1]
    assert out.mtp_logits[0].shape == (8, T - 1, TOK.vocab_size)
    # one routing per MoE layer that ran: the main model's, then the MTP block's
    assert len(out.routing) == len(list(iter_moe_layers(model)))
    # the MTP loss is lambda times the cross-entropy of predicting t_{i+2}
    ce = torch.nn.functional.cross_entropy(out.mtp_logits[0].reshape(-1, TOK.vocab_size), batch["targets"][:, 1:].reshape(-1),
                                           reduction="none")
    m = batch["loss_mask"][:, 1:].reshape(-1)
    torch.testing.assert_close(parts["mtp"], TINY.mtp_loss_weight * (ce * m).sum() / m.sum())
    dense = MiniDeepSeek(TINY.replace(n_routed_experts=0, num_nextn_predict_layers=0))
    assert set(pretrain_loss(dense, {"input_ids": batch["input_ids"], "targets": batch["targets"]}).parts) == {"main"}


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="TrainConfig.lr="):
        TrainConfig(lr=0)


def test_training_reduces_the_loss_and_moves_the_balancing_bias():
    torch.manual_seed(0)
    model = MiniDeepSeek(TINY)
    batches, _ = _batches()
    trainer = Trainer(model, TrainConfig(steps=30, lr=3e-3, warmup_steps=3, eval_every=0), batches)
    history = trainer.train()
    assert history[-1]["loss_main"] < 0.7 * history[0]["loss_main"]
    assert all("max_vio" in r and len(r["expert_load"]) == 2 for r in history)  # 1 MoE layer + the MTP block's
    biases = [m.gate.e_score_correction_bias for m in iter_moe_layers(model)]
    assert all(b.abs().sum() > 0 for b in biases)


def test_checkpoint_loads_back_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    model = MiniDeepSeek(TINY)
    Trainer(model, TrainConfig(steps=5, eval_every=0), _batches()[0]).train()
    save_checkpoint(model, tmp_path)
    back = load_model_from_checkpoint(tmp_path)
    assert back.config == model.config
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the trained balancing biases too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no pickle
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "deepseek_v3"


@pytest.mark.parametrize("dropout", [0.0, 0.2], ids=["no_dropout", "dropout"])
def test_resuming_gives_exactly_the_losses_of_an_uninterrupted_run(dropout, tmp_path):
    config = TINY.replace(attention_dropout=dropout)  # with dropout, the restored random state matters
    cfg = TrainConfig(steps=12, lr=3e-3, warmup_steps=2, eval_every=0)
    torch.manual_seed(0)
    full = Trainer(MiniDeepSeek(config), cfg, _batches()[0])
    full.train()

    torch.manual_seed(0)
    first = Trainer(MiniDeepSeek(config), cfg, _batches()[0])
    first.train(steps=6)
    folder = first.save(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "optimizer.safetensors",
                                                        "trainer.json"]
    torch.manual_seed(123)  # a different process state must not matter
    second = Trainer(MiniDeepSeek(config), cfg, _batches()[0]).load(folder)
    assert second.step == 6 and len(second.history) == 6
    second.train()
    assert [r["loss"] for r in second.history] == [r["loss"] for r in full.history]
    fa, fb = full.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    oa, ob = full.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    second.write_csv(tmp_path / "metrics.csv")
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == 12 and "loss_main" in rows[0]


def test_a_model_only_folder_is_not_a_training_checkpoint(tmp_path):
    save_checkpoint(MiniDeepSeek(TINY), tmp_path)
    with pytest.raises(FileNotFoundError, match="not a training checkpoint .no optimizer.safetensors or trainer.json"):
        Trainer(MiniDeepSeek(TINY), TrainConfig(steps=1), _batches()[0]).load(tmp_path)


def test_exact_match_uses_the_verifier():
    torch.manual_seed(0)
    model = MiniDeepSeek(TINY)
    _, splits = _batches()
    task = AdditionTask(1, 2)
    result = exact_match(model, TOK, splits["test"][:8], task.verify, max_new_tokens=8)
    assert result["n"] == 8 and 0 <= result["exact_match"] <= 1
    always = exact_match(model, TOK, splits["test"][:8], lambda p, text: True, max_new_tokens=2)
    assert always["exact_match"] == 1.0


def test_speculative_decoding_with_mtp_equals_greedy_and_accepts_drafts():
    from mlakit.generate import generate, speculative_generate

    torch.manual_seed(0)
    model = MiniDeepSeek(TINY)
    Trainer(model, TrainConfig(steps=150, lr=1e-2, warmup_steps=10, eval_every=0), _batches()[0]).train()
    model.eval()
    accepted = drafted = 0
    for p in make_splits(AdditionTask(1, 2).all_problems(), seed=0)["test"][:6]:
        ids = torch.tensor([TOK.encode(p.prompt, bos=True)])
        plain = generate(model, ids, 20, eos_id=TOK.eos_id)
        fast, stats = speculative_generate(model, ids, 20, eos_id=TOK.eos_id)
        assert torch.equal(fast, plain[:, : fast.shape[1]]) and fast.shape == plain.shape
        accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
    assert drafted > 0 and accepted > 0  # a trained MTP module guesses some second tokens right
    with pytest.raises(ValueError, match="one sequence"):
        speculative_generate(model, torch.zeros(2, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="MTP"):
        speculative_generate(MiniDeepSeek(TINY.replace(num_nextn_predict_layers=0)), ids, 4)
