"""One checkpoint format: transformers' DeepseekV3 layout, with the MTP module where DeepSeek's releases put it.

Every folder mlakit writes, an export for transformers or a training
checkpoint, starts the same way:

    config.json         DeepseekV3Config's fields (``model_type: "deepseek_v3"``,
                        ``num_nextn_predict_layers``, ...) and the full ModelConfig
                        under ``"mlakit_config"``, so a round trip is lossless
    model.safetensors   every weight and buffer, under transformers' on-disk names

and a :class:`~mlakit.train.Trainer` adds ``optimizer.safetensors`` (AdamW's
state, ``state.{param index}.{name}``) and ``trainer.json`` (step, metrics,
param groups, torch's random state) beside them
(:func:`save_training_checkpoint`). Safetensors and JSON only: loading a
checkpoint never unpickles, so it cannot run code.

Names in model.safetensors, L = ``num_hidden_layers``:

- the main model: ``model.embed_tokens.weight``, ``model.layers.{i}.input_layernorm``,
  ``.self_attn.*`` (``q_a_proj``, ``kv_a_proj_with_mqa``, ...), ``.post_attention_layernorm``,
  ``.mlp.*``, then ``model.norm.weight`` and ``lm_head.weight``. mlakit's names
  are transformers' below ``model.`` already, except the routed experts, stored
  stacked in memory and split per expert on disk (``mlp.experts.{j}.gate_proj.weight``,
  ``up_proj``, ``down_proj``; :func:`mlakit.moe.to_per_expert_state_dict`). The
  balancing bias is ``mlp.gate.e_score_correction_bias`` (float32);
- MTP module k (V3 §2.2; ``mtp.{k}`` in mlakit) is layer ``L + k``, as in
  DeepSeek-V3's released weights, whose MTP module is layer 61 (their
  README_WEIGHTS.md): ``model.layers.{L+k}.enorm.weight``, ``.hnorm.weight``,
  ``.eh_proj.weight``, the block's names directly under the layer
  (``.input_layernorm``, ``.self_attn.*``, ``.post_attention_layernorm``, ``.mlp.*``),
  ``.shared_head.norm.weight``, and, also as released, copies of the tensors the
  module shares with the main model: ``.embed_tokens.weight`` and
  ``.shared_head.head.weight``. Loading checks that the copies equal
  ``model.embed_tokens.weight`` and ``lm_head.weight`` (mlakit shares them; a
  checkpoint whose MTP head differs cannot be expressed) and drops them.

transformers' DeepseekV3ForCausalLM builds L layers and leaves the MTP layer
unloaded. It registers ``model\\.layers\\.61.*`` (V3's own MTP layer) in
``_keys_to_ignore_on_load_unexpected``, so for V3 it says nothing; at another
depth its load report lists the MTP layer's keys as UNEXPECTED (a logged
warning, not an error), and nothing else: the logits are those of our model.
transformers' own MTP drafting (``generate(..., use_mtp=True)``) finds the
MTP weights by the same pattern, so it reads ours only at V3's depth of 61.

What the layout cannot express is refused with a clear error rather than
written in a form transformers would misread: attention other than MLA,
softmax expert scoring (DeepSeek-V2 style), tied embedding and head. Every
checkpoint the lessons write is an MLA + sigmoid model with an untied head.

Folders of earlier mlakit versions (a bare ModelConfig as config.json and
mlakit's own names such as ``layers.0.self_attn...`` / ``mtp.0...`` in
model.safetensors, or the separate ``mtp.safetensors`` of the first export)
are refused with a ValueError that says what was expected and what was found.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelConfig
from .model import MiniDeepSeek
from .moe import from_per_expert_state_dict, to_per_expert_state_dict

CONFIG_FILE, MODEL_FILE = "config.json", "model.safetensors"
OPTIMIZER_FILE, TRAINER_FILE = "optimizer.safetensors", "trainer.json"  # a Trainer's checkpoint adds these
OLD_MTP_FILE = "mtp.safetensors"  # the separate MTP file of the first mlakit.hf export, no longer written
EXPECTED = ("expected transformers' DeepseekV3 layout: config.json with model_type deepseek_v3 and "
            "model.safetensors with model.layers.* names")
MTP_OWN = ("enorm", "hnorm", "eh_proj")  # an MTP module's own tensors, same names in mlakit and on disk
# what an MTP layer stores a copy of, as released: its name in the layer -> the main model's tensor on disk
MTP_COPIES = {"embed_tokens.weight": "model.embed_tokens.weight", "shared_head.head.weight": "lm_head.weight"}
_LAYER_KEY = re.compile(r"^model\.layers\.(?P<i>\d+)\.(?P<rest>.+)$")


# ----------------------------------------------------------------- config.json
def check_exportable(config: ModelConfig) -> None:
    """Raise ValueError naming what transformers' DeepseekV3 layout cannot express."""
    where = "transformers' DeepseekV3 (mlakit's checkpoint layout)"
    if config.attn_type != "mla":
        raise ValueError(f"{where} uses MLA; attn_type={config.attn_type!r} cannot be saved in it")
    if config.n_routed_experts and config.scoring_func != "sigmoid":
        raise ValueError(f"{where} scores experts with a sigmoid; scoring_func={config.scoring_func!r} "
                         "(DeepSeek-V2 style) cannot be saved in it")
    if config.tie_word_embeddings:
        raise ValueError(f"{where} has an untied embedding and LM head (DeepSeek's layout); "
                         "tie_word_embeddings=True cannot be saved in it")


def hf_config_dict(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """config.json contents: DeepseekV3Config's fields, and the full ModelConfig under "mlakit_config"."""
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
        # a dense model is a DeepseekV3 whose every layer is one of the first k dense ones
        "first_k_dense_replace": config.num_hidden_layers if dense else config.first_k_dense_replace,
        "norm_topk_prob": config.norm_topk_prob, "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings, "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope, "rope_interleave": config.rope_interleave, "attention_bias": False,
        "attention_dropout": config.attention_dropout, "tie_word_embeddings": False,
        "num_nextn_predict_layers": config.num_nextn_predict_layers,
        "dtype": str(dtype).removeprefix("torch."),
        "mlakit_config": config.to_dict(),
    }


def config_from_hf(data: dict, num_mtp_layers: int = 0) -> ModelConfig:
    """A ModelConfig from a DeepseekV3 config.json: mlakit's own copy when present, else the V3 fields
    with ``num_mtp_layers`` MTP modules (the number of layers >= L the weights hold)."""
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
                       num_nextn_predict_layers=num_mtp_layers)


# ------------------------------------------------------------------ tensor names
def to_disk_state_dict(model: MiniDeepSeek) -> dict[str, torch.Tensor]:
    """The tensors of ``model`` under their on-disk names (see the module docstring)."""
    L = model.config.num_hidden_layers
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach()
        if key == "lm_head.weight":
            out[key] = value
        elif key.startswith("mtp."):
            _, k, rest = key.split(".", 2)
            layer = f"model.layers.{L + int(k)}."
            if rest == "shared_head_norm.weight":
                rest = "shared_head.norm.weight"
            out[layer + rest.removeprefix("block.")] = value  # enorm, hnorm, eh_proj keep their names
        else:
            out[f"model.{key}"] = value
    for k in range(len(model.mtp)):
        layer = f"model.layers.{L + k}."
        for copy, main in MTP_COPIES.items():  # cloned: safetensors refuses tensors that share storage
            out[layer + copy] = out[main].clone()
    return to_per_expert_state_dict(out)


def from_disk_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Inverse of :func:`to_disk_state_dict`: mlakit's names, the MTP copies checked against the main tensors."""
    L = config.num_hidden_layers
    ours: dict[str, torch.Tensor] = {}
    copies: list[tuple[str, str]] = []  # (a copy, the main tensor it copies), both disk names
    for key, value in from_per_expert_state_dict(state).items():
        m = _LAYER_KEY.match(key)
        if key == "lm_head.weight":
            ours[key] = value
        elif m is None or int(m["i"]) < L:
            ours[key.removeprefix("model.")] = value
        else:
            k, rest = int(m["i"]) - L, m["rest"]
            if rest in MTP_COPIES:
                copies.append((key, MTP_COPIES[rest]))
            elif rest == "shared_head.norm.weight":
                ours[f"mtp.{k}.shared_head_norm.weight"] = value
            elif rest.split(".", 1)[0] in MTP_OWN:
                ours[f"mtp.{k}.{rest}"] = value
            else:
                ours[f"mtp.{k}.block.{rest}"] = value
    for key, main in copies:
        if main in state and not torch.equal(state[key], state[main]):
            raise ValueError(f"{key} differs from {main}: mlakit's MTP modules share the main model's "
                             "embedding and head, as DeepSeek-V3's do, so a checkpoint whose copies differ cannot be loaded")
    return ours


# ---------------------------------------------------------------- the folder
def _describe_old_layout(folder: Path) -> str | None:
    """None for a DeepseekV3-layout folder, else what it holds instead (for the error message)."""
    found = []
    config_path, model_path = folder / CONFIG_FILE, folder / MODEL_FILE
    if not config_path.exists():
        found.append("no config.json")
    else:
        data = json.loads(config_path.read_text())
        if data.get("model_type") != "deepseek_v3":
            if "model_type" not in data and "attn_type" in data:
                found.append("config.json holding a bare mlakit ModelConfig (no model_type)")
            else:
                found.append(f"config.json with model_type {data.get('model_type')!r}")
    if not model_path.exists():
        found.append("no model.safetensors" + (" (a sharded model.safetensors.index.json, not read by mlakit)"
                                               if (folder / "model.safetensors.index.json").exists() else ""))
    else:
        with safe_open(model_path, "pt") as f:
            foreign = sorted(k for k in f.keys() if not (k.startswith("model.") or k == "lm_head.weight"))
        if foreign:
            found.append(f"model.safetensors with mlakit's own names ({', '.join(foreign[:3])}, ...)")
    if (folder / OLD_MTP_FILE).exists():
        found.append("mtp.safetensors, the separate MTP file of the first mlakit.hf export "
                     "(the MTP module is now layer num_hidden_layers + k of model.safetensors)")
    return "; ".join(found) or None


def _unreadable(path: Path, error: Exception) -> ValueError:
    return ValueError(f"{path}: not a readable safetensors file ({path.stat().st_size:,} bytes; {error}): it may be "
                      "truncated or damaged, save the checkpoint again")


def _read(folder: str | Path, device: torch.device | str) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and model.safetensors of a DeepseekV3-layout folder; ValueError naming an older layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder ({EXPECTED})")
    config_path, model_path = folder / CONFIG_FILE, folder / MODEL_FILE
    data = None
    if config_path.is_file():
        try:
            data = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config_path}: not valid JSON ({e}); write it again with save_pretrained") from None
        if not isinstance(data, dict):
            raise ValueError(f"{config_path}: not a model config (a JSON {type(data).__name__}); {EXPECTED}")
    if model_path.is_file():
        try:
            with safe_open(model_path, "pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:  # empty, truncated, random bytes
            raise _unreadable(model_path, e) from None
    old = _describe_old_layout(folder)
    if old is not None:
        raise ValueError(f"{folder}: {EXPECTED}; this folder has {old}. It was written by an earlier mlakit "
                         "or another tool, or a file is missing: load it with what wrote it and save it again "
                         "with save_pretrained.")
    try:
        state = load_file(model_path, device=str(device))
    except (SafetensorError, OSError) as e:  # a header that reads, over data that was cut short
        raise _unreadable(model_path, e) from None
    return data, state


def _check_fits(folder: Path, ours: dict[str, torch.Tensor], model: nn.Module) -> None:
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    shapes = [f"{k} {tuple(ours[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in ours and ours[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{folder}: checkpoint does not fit the model's config; missing (mlakit names) {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape (checkpoint vs model) {shapes[:5]}")


def save_pretrained(model: MiniDeepSeek, folder: str | Path) -> Path:
    """Write ``model`` as config.json and model.safetensors in transformers' DeepseekV3 layout; returns the folder.

    Tensors keep their dtype and are written from any device; an existing
    folder is updated in place (other files in it are left as they are).
    """
    config_json = hf_config_dict(model.config, model.embed_tokens.weight.dtype)  # refuses what V3 cannot express
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config_json, indent=2))
    state = {k: v.contiguous() for k, v in to_disk_state_dict(model).items()}
    save_file(state, folder / MODEL_FILE, metadata={"format": "pt"})
    return folder


def from_pretrained(folder: str | Path, device: torch.device | str = "cpu") -> MiniDeepSeek:
    """A MiniDeepSeek from a DeepseekV3-layout folder (written by :func:`save_pretrained` or by transformers),
    on ``device``, every tensor bit for bit and in the dtype it was saved in."""
    folder = Path(folder)
    data, state = _read(folder, device)
    L = data["num_hidden_layers"]
    mtp_layers = {int(m["i"]) for k in state if (m := _LAYER_KEY.match(k)) and int(m["i"]) >= L}
    config = config_from_hf(data, num_mtp_layers=len(mtp_layers))
    ours = from_disk_state_dict(state, config)
    with torch.device(device):
        model = MiniDeepSeek(config)
    _check_fits(folder, ours, model)
    model.load_state_dict(ours, strict=True, assign=True)  # assign: the saved tensors and dtypes, no copy
    return model


def load_into(model: MiniDeepSeek, folder: str | Path) -> MiniDeepSeek:
    """Copy a checkpoint's weights into ``model`` in place (its parameters stay the same objects, so an
    optimizer built on them stays valid); names and shapes must match exactly. Returns ``model``."""
    folder = Path(folder)
    _, state = _read(folder, "cpu")
    ours = from_disk_state_dict(state, model.config)
    _check_fits(folder, ours, model)
    model.load_state_dict(ours, strict=True)  # copies onto the model's device, in its dtype
    return model


# ------------------------------------------------------- a training checkpoint
def _rng_state() -> dict:
    """torch's random state (CPU, and CUDA where it is in use) as hex strings for trainer.json."""
    state = {"cpu": torch.get_rng_state().numpy().tobytes().hex()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.numpy().tobytes().hex() for s in torch.cuda.get_rng_state_all()]
    return state


def _bytes_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray.fromhex(text), dtype=torch.uint8)


def _set_rng_state(state: dict) -> None:
    """Inverse of :func:`_rng_state`; the CUDA state only where as many GPUs are visible as were saved."""
    torch.set_rng_state(_bytes_tensor(state["cpu"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in cuda])


def save_training_checkpoint(folder: str | Path, model: MiniDeepSeek, optimizer: torch.optim.Optimizer,
                             meta: dict) -> Path:
    """:func:`save_pretrained`, then ``optimizer.safetensors`` (``state.{param index}.{name}``: AdamW's
    moments and step counts) and ``trainer.json`` (``meta``, the optimizer's param groups, the random state)."""
    folder = save_pretrained(model, folder)
    state = optimizer.state_dict()
    tensors = {f"state.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    save_file(tensors, folder / OPTIMIZER_FILE, metadata={"format": "pt"})  # safetensors copies to the CPU
    (folder / TRAINER_FILE).write_text(json.dumps({**meta, "param_groups": state["param_groups"],
                                                   "rng": _rng_state()}))
    return folder


def load_training_checkpoint(folder: str | Path, model: MiniDeepSeek, optimizer: torch.optim.Optimizer) -> dict:
    """Inverse of :func:`save_training_checkpoint`: weights into ``model`` (:func:`load_into`), the optimizer's
    state, torch's random state; returns trainer.json. Checks that the files exist before changing anything."""
    folder = Path(folder)
    missing = [name for name in (OPTIMIZER_FILE, TRAINER_FILE) if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a training checkpoint (no {' or '.join(missing)}); "
                                "a model alone loads with from_pretrained")
    meta = json.loads((folder / TRAINER_FILE).read_text())
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(folder / OPTIMIZER_FILE).items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    load_into(model, folder)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})  # moves to the params' device
    if "rng" in meta:
        _set_rng_state(meta["rng"])
    return meta
