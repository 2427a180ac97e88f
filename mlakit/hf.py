"""Export to and import from transformers' DeepseekV3 checkpoint format.

``save_pretrained(model, folder)`` writes what
``transformers.DeepseekV3ForCausalLM.from_pretrained(folder)`` reads: a
``config.json`` with DeepseekV3Config's fields and ``model.safetensors`` with
the on-disk names (``model.layers.{i}.self_attn.q_a_proj.weight``, per-expert
``mlp.experts.{j}.gate_proj.weight``, ``lm_head.weight``, ...). mlakit's own
names are transformers' below ``model.`` already, so the mapping is a prefix
plus the split of the stacked experts into per-expert tensors.

Multi-token-prediction modules are not part of DeepseekV3ForCausalLM; they go
to ``mtp.safetensors`` beside the model, which transformers ignores and
:func:`from_pretrained` loads back. The full mlakit config is stored under
``"mlakit_config"`` in config.json, so a round trip is lossless.

Limits of the format, refused with a clear error: DeepseekV3 scores experts
with a sigmoid (no softmax gate, so V2-style models cannot be exported), uses
MLA (no MHA/GQA/MQA baselines), and does not tie embedding and head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .moe import from_per_expert_state_dict, to_per_expert_state_dict

MODEL_FILE, MTP_FILE, CONFIG_FILE = "model.safetensors", "mtp.safetensors", "config.json"


def check_exportable(config: ModelConfig) -> None:
    """Raise ValueError naming what transformers' DeepseekV3 cannot express."""
    if config.attn_type != "mla":
        raise ValueError(f"transformers' DeepseekV3 uses MLA; attn_type={config.attn_type!r} cannot be exported")
    if config.n_routed_experts and config.scoring_func != "sigmoid":
        raise ValueError("transformers' DeepseekV3 scores experts with a sigmoid; "
                         f"scoring_func={config.scoring_func!r} (DeepSeek-V2 style) cannot be exported to it")
    if config.tie_word_embeddings:
        raise ValueError("mlakit exports untied embedding and LM head only (DeepSeek's layout)")


def hf_config_dict(config: ModelConfig) -> dict:
    """config.json contents for transformers' DeepseekV3Config."""
    check_exportable(config)
    dense = config.n_routed_experts == 0
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        rs = dict(config.rope_scaling)
        rope = {**rs, "rope_type": rs.pop("type", rs.get("rope_type")), "rope_theta": config.rope_theta}
        rope.pop("type", None)
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "moe_intermediate_size": config.moe_intermediate_size,
        "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_attention_heads,
        "n_shared_experts": config.n_shared_experts, "n_routed_experts": max(1, config.n_routed_experts),
        "routed_scaling_factor": config.routed_scaling_factor, "kv_lora_rank": config.kv_lora_rank,
        "q_lora_rank": config.q_lora_rank, "qk_rope_head_dim": config.qk_rope_head_dim,
        "v_head_dim": config.v_head_dim, "qk_nope_head_dim": config.qk_nope_head_dim,
        "n_group": config.n_group, "topk_group": config.topk_group,
        "num_experts_per_tok": config.num_experts_per_tok,
        "first_k_dense_replace": config.num_hidden_layers if dense else config.first_k_dense_replace,
        "norm_topk_prob": config.norm_topk_prob, "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings, "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope, "rope_interleave": config.rope_interleave, "attention_bias": False,
        "attention_dropout": config.attention_dropout, "tie_word_embeddings": False,
        "num_nextn_predict_layers": config.num_nextn_predict_layers, "torch_dtype": "float32",
        "mlakit_config": config.to_dict(),
    }


def save_pretrained(model, folder: str | Path) -> Path:
    """Write ``model`` (a MiniDeepSeek) in transformers' DeepseekV3 format; returns the folder."""
    config = model.config
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(hf_config_dict(config), indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    main = {("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): v
            for k, v in state.items() if not k.startswith("mtp.")}
    save_file(to_per_expert_state_dict(main), folder / MODEL_FILE, metadata={"format": "pt"})
    mtp = {k: v for k, v in state.items() if k.startswith("mtp.")}
    if mtp:
        save_file(to_per_expert_state_dict(mtp), folder / MTP_FILE, metadata={"format": "pt"})
    return folder


def config_from_hf(data: dict) -> ModelConfig:
    """A ModelConfig from a DeepseekV3 config.json (mlakit's own copy when present)."""
    if "mlakit_config" in data:
        return ModelConfig.from_dict(data["mlakit_config"])
    rope = data.get("rope_parameters") or {}
    kind = rope.get("rope_type", "default")
    scaling = None
    if kind != "default":
        scaling = {k: v for k, v in rope.items() if k not in ("rope_type", "rope_theta")} | {"type": kind}
    elif data.get("rope_scaling"):
        scaling = dict(data["rope_scaling"])
    keys = ["vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "n_shared_experts", "n_routed_experts", "routed_scaling_factor", "kv_lora_rank",
            "q_lora_rank", "qk_rope_head_dim", "v_head_dim", "qk_nope_head_dim", "n_group", "topk_group",
            "num_experts_per_tok", "first_k_dense_replace", "norm_topk_prob", "max_position_embeddings",
            "rms_norm_eps", "rope_interleave"]
    fields = {k: data[k] for k in keys if k in data}
    fields["rope_theta"] = rope.get("rope_theta", data.get("rope_theta", 10000.0))
    return ModelConfig(**fields, rope_scaling=scaling, scoring_func="sigmoid", attn_type="mla",
                       num_nextn_predict_layers=0)


def from_pretrained(folder: str | Path):
    """Load a DeepseekV3-format folder (written by :func:`save_pretrained` or by transformers) into MiniDeepSeek."""
    from .model import MiniDeepSeek

    folder = Path(folder)
    config = config_from_hf(json.loads((folder / CONFIG_FILE).read_text()))
    state = from_per_expert_state_dict(load_file(folder / MODEL_FILE))
    ours = {k.removeprefix("model."): v for k, v in state.items()}
    if (folder / MTP_FILE).exists() and config.num_nextn_predict_layers:
        ours.update(from_per_expert_state_dict(load_file(folder / MTP_FILE)))
    model = MiniDeepSeek(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{folder}: checkpoint does not fit the config; missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        model.load_state_dict(ours, strict=True)
    return model
