"""mlakit's one checkpoint layout: transformers' DeepseekV3 names, the MTP module as DeepSeek-V3's released weights
store it (layer num_hidden_layers + k), bit-for-bit round trips, and clear errors for older layouts."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file, save_model

from mlakit import ModelConfig, checkpoint
from mlakit.model import MiniDeepSeek
from mlakit.train import load_checkpoint_into, load_model_from_checkpoint, save_checkpoint

CFG = ModelConfig.from_preset("nano", num_hidden_layers=3, hidden_size=64, num_attention_heads=2,
                              intermediate_size=128, moe_intermediate_size=32, vocab_size=96)
L = CFG.num_hidden_layers

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(cfg=CFG, seed=0):
    """A model whose norms and balancing biases are not at their initial values (so a lost one shows)."""
    torch.manual_seed(seed)
    model = MiniDeepSeek(cfg)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("e_score_correction_bias"):
                t.uniform_(-0.2, 0.2)
            elif name.endswith("norm.weight"):
                t.uniform_(0.5, 1.5)
    return model


def _keys(folder):
    with safe_open(folder / "model.safetensors", "pt") as f:
        return set(f.keys())


def _same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def test_the_mtp_module_is_stored_as_the_layer_after_the_last_one(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    keys = _keys(tmp_path)
    for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight", "shared_head.head.weight",
                 "embed_tokens.weight", "input_layernorm.weight", "self_attn.kv_a_proj_with_mqa.weight",
                 "post_attention_layernorm.weight", "mlp.gate.weight", "mlp.gate.e_score_correction_bias",
                 "mlp.experts.0.gate_proj.weight", "mlp.experts.7.down_proj.weight", "mlp.shared_experts.up_proj.weight"):
        assert f"model.layers.{L}.{name}" in keys, name
    assert not any(k.startswith(("mtp.", f"model.layers.{L + 1}.")) for k in keys)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:  # the copies DeepSeek's release also stores
        assert torch.equal(f.get_tensor(f"model.layers.{L}.shared_head.head.weight"), model.lm_head.weight)
        assert torch.equal(f.get_tensor(f"model.layers.{L}.embed_tokens.weight"), model.embed_tokens.weight)
        assert torch.equal(f.get_tensor(f"model.layers.{L}.eh_proj.weight"), model.mtp[0].eh_proj.weight)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "deepseek_v3" and config["num_nextn_predict_layers"] == 1
    assert config["num_hidden_layers"] == L and ModelConfig.from_dict(config["mlakit_config"]) == CFG


def test_round_trip_is_bit_for_bit_mtp_and_balancing_biases_included(tmp_path):
    model = _model(CFG.replace(num_nextn_predict_layers=2))
    model.save_pretrained(tmp_path)
    assert f"model.layers.{L + 1}.mlp.experts.0.up_proj.weight" in _keys(tmp_path)
    back = MiniDeepSeek.from_pretrained(tmp_path)
    assert back.config == model.config and _same_tensors(model, back)
    biases = [k for k in back.state_dict() if k.endswith("e_score_correction_bias")]
    assert len(biases) == 4 and any(k.startswith("mtp.1.") for k in biases)  # 2 main MoE layers, 2 MTP blocks
    ids = torch.randint(0, CFG.vocab_size, (2, 9))
    with torch.no_grad():
        a, b = model(ids, output_mtp=True), back(ids, output_mtp=True)
    assert torch.equal(a.logits, b.logits) and all(map(torch.equal, a.mtp_logits, b.mtp_logits))


def test_dtypes_are_kept_and_the_train_names_are_the_same_code(tmp_path):
    model = _model().to(torch.bfloat16)
    save_checkpoint(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    back = load_model_from_checkpoint(tmp_path)
    assert back.lm_head.weight.dtype == torch.bfloat16 and _same_tensors(model, back)
    into = load_checkpoint_into(_model(seed=1).to(torch.bfloat16), tmp_path)  # in place, strict
    assert _same_tensors(model, into)


def test_a_folder_without_mlakit_config_restores_the_mtp_layer_it_holds(tmp_path):
    """As a released DeepSeek-V3 folder: V3's config.json and its MTP layer, no mlakit fields."""
    model = _model()
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    del data["mlakit_config"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    back = checkpoint.from_pretrained(tmp_path)
    assert back.config.num_nextn_predict_layers == 1 and _same_tensors(model, back)


def test_an_mtp_head_that_is_not_the_lm_head_is_refused(tmp_path):
    _model().save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    state[f"model.layers.{L}.shared_head.head.weight"] += 1
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=rf"model\.layers\.{L}\.shared_head\.head\.weight differs from lm_head"):
        checkpoint.from_pretrained(tmp_path)


EXPECTED = "expected transformers' DeepseekV3 layout: config.json with model_type deepseek_v3"


def test_an_older_training_checkpoint_gets_a_clear_error(tmp_path):
    model = _model()
    save_model(model, str(tmp_path / "model.safetensors"))  # what Trainer.save wrote before this layout
    (tmp_path / "config.json").write_text(model.config.to_json())
    with pytest.raises(ValueError, match=EXPECTED) as err:
        load_model_from_checkpoint(tmp_path)
    assert "bare mlakit ModelConfig" in str(err.value) and "mlakit's own names (embed_tokens.weight" in str(err.value)
    with pytest.raises(ValueError, match=EXPECTED):
        load_checkpoint_into(MiniDeepSeek(CFG), tmp_path)


def test_the_first_exports_separate_mtp_file_gets_a_clear_error(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    state = model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items() if k.startswith("mtp.")}, tmp_path / "mtp.safetensors")
    with pytest.raises(ValueError, match=EXPECTED) as err:
        MiniDeepSeek.from_pretrained(tmp_path)
    assert "mtp.safetensors" in str(err.value)


def test_missing_files_and_a_foreign_config_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        checkpoint.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="this folder has no config.json; no model.safetensors"):
        checkpoint.from_pretrained(tmp_path)
    _model().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text()) | {"model_type": "llama"}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="config.json with model_type 'llama'"):
        checkpoint.from_pretrained(tmp_path)


def test_a_checkpoint_of_another_shape_says_what_does_not_fit(tmp_path):
    _model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not fit the model's config"):
        load_checkpoint_into(MiniDeepSeek(CFG.replace(num_nextn_predict_layers=0)), tmp_path)


@pytest.mark.parametrize("changes, phrase", [
    ({"scoring_func": "softmax", "norm_topk_prob": False}, "sigmoid"),
    ({"attn_type": "mha"}, "MLA"),
    ({"tie_word_embeddings": True}, "untied"),
])
def test_what_the_layout_cannot_express_is_refused_before_anything_is_written(changes, phrase, tmp_path):
    cfg = CFG.variant("mha") if changes.get("attn_type") == "mha" else CFG.replace(**changes)
    with pytest.raises(ValueError, match=phrase):
        save_checkpoint(MiniDeepSeek(cfg), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loading_onto_a_gpu_keeps_every_tensor(tmp_path):
    model = _model().cuda()
    model.save_pretrained(tmp_path)  # written from the GPU
    back = checkpoint.from_pretrained(tmp_path, device="cuda")
    assert all(t.is_cuda for t in [*back.parameters(), *back.buffers()])
    assert _same_tensors(model, back)
    cpu = checkpoint.from_pretrained(tmp_path)
    assert all(t.device.type == "cpu" for t in cpu.state_dict().values()) and _same_tensors(model.cpu(), cpu)
