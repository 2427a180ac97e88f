"""Export to transformers' DeepseekV3: the same logits from transformers' own model, and a lossless round trip.

mlakit.hf is mlakit.checkpoint under its older name; the layout itself (MTP layer, old folders) is tested in
test_checkpoint.py."""

import json

import pytest
import torch

from mlakit import ModelConfig, hf
from mlakit.model import MiniDeepSeek

transformers = pytest.importorskip("transformers")

BASE = ModelConfig.from_preset("nano", n_group=2, topk_group=1, routed_scaling_factor=2.5, num_hidden_layers=3)
CASES = {
    "nano": BASE,
    "no_q_lora_halves_rope": BASE.replace(q_lora_rank=None, rope_interleave=False),
    "yarn_no_renorm": BASE.replace(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                                 "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
                                   norm_topk_prob=False, first_k_dense_replace=2),
    "dense": BASE.replace(n_routed_experts=0, num_nextn_predict_layers=0),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    model = MiniDeepSeek(cfg).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.uniform_(-0.2, 0.2)  # a trained-looking balancing bias, so selection differs from plain top-k
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def _load_in_transformers(folder, num_hidden_layers):
    """transformers' model from ``folder``; nothing missing, and nothing unexpected but the MTP layer.

    transformers' DeepseekV3 ignores V3's MTP layer by name (``model.layers.61``), so at another
    depth its load report lists our MTP layer, layer num_hidden_layers, as unexpected: not loaded.
    """
    ref, info = transformers.DeepseekV3ForCausalLM.from_pretrained(
        folder, attn_implementation="eager", experts_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["error_msgs"]
    assert all(k.startswith(f"model.layers.{num_hidden_layers}.") for k in info["unexpected_keys"])
    return ref.eval()


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_loads_the_export_and_gives_the_same_logits(name, tmp_path):
    model = _model(CASES[name])
    hf.save_pretrained(model, tmp_path)
    ref = _load_in_transformers(tmp_path, model.config.num_hidden_layers)
    ids = torch.randint(0, model.config.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-4)


def test_transformers_reads_a_training_checkpoint_as_it_is(tmp_path):
    from mlakit.train import TrainConfig, Trainer

    model = _model(BASE)
    batch = {"input_ids": torch.randint(0, BASE.vocab_size, (4, 16))}
    batch["targets"] = batch["input_ids"].roll(-1, 1)
    trainer = Trainer(model, TrainConfig(steps=2, warmup_steps=1, eval_every=0), lambda step: batch)
    trainer.train()
    folder = trainer.save(tmp_path / "ckpt")
    ref = _load_in_transformers(folder, BASE.num_hidden_layers)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch["input_ids"]).logits, ref(batch["input_ids"]).logits,
                                   atol=1e-5, rtol=1e-4)


def test_round_trip_is_lossless_including_mtp(tmp_path):
    model = _model(BASE)
    hf.save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # MTP inside
    back = hf.from_pretrained(tmp_path)
    assert back.config == model.config
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_on_disk_names_follow_transformers(tmp_path):
    from safetensors import safe_open

    hf.save_pretrained(_model(BASE), tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    for key in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "model.layers.0.mlp.gate_proj.weight",
                "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.e_score_correction_bias",
                "model.layers.1.mlp.experts.7.down_proj.weight", "model.layers.1.mlp.shared_experts.up_proj.weight"):
        assert key in keys, key
    assert not any(k.startswith("mtp.") for k in keys)
    assert f"model.layers.{BASE.num_hidden_layers}.eh_proj.weight" in keys  # the MTP module, as V3 releases it
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "deepseek_v3" and config["num_key_value_heads"] == BASE.num_attention_heads


def test_a_plain_transformers_checkpoint_loads_into_mlakit(tmp_path):
    model = _model(BASE.replace(num_nextn_predict_layers=0))
    hf.save_pretrained(model, tmp_path / "ours")
    ref = _load_in_transformers(tmp_path / "ours", BASE.num_hidden_layers)
    ref.save_pretrained(tmp_path / "theirs")
    data = json.loads((tmp_path / "theirs" / "config.json").read_text())
    data.pop("mlakit_config", None)  # as if written by transformers alone
    (tmp_path / "theirs" / "config.json").write_text(json.dumps(data))
    back = hf.from_pretrained(tmp_path / "theirs")
    ids = torch.randint(0, BASE.vocab_size, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("changes, phrase", [
    ({"scoring_func": "softmax", "norm_topk_prob": False}, "sigmoid"),
    ({"attn_type": "mha"}, "MLA"),
    ({"tie_word_embeddings": True}, "untied"),
])
def test_what_transformers_cannot_express_is_refused(changes, phrase, tmp_path):
    cfg = BASE.variant("mha") if changes.get("attn_type") == "mha" else BASE.replace(**changes)
    with pytest.raises(ValueError, match=phrase):
        hf.save_pretrained(MiniDeepSeek(cfg), tmp_path)
