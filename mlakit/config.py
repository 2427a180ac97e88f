"""Model configuration: one validated dataclass for every model in the course.

Field names follow transformers' ``DeepseekV3Config`` wherever the concept
exists, so a config moves between mlakit and transformers by name. Two fields
are mlakit's own: ``attn_type`` selects the attention family (the baselines
MHA / GQA / MQA, or DeepSeek's MLA) and ``head_dim`` sets the per-head width of
the baselines. ``scoring_func`` follows DeepSeek-V2's config (V3 always uses
sigmoid).

Presets hold the real shapes of DeepSeek-V2, V2-Lite and V3 (DeepSeek-V2
paper arXiv 2405.04434 and DeepSeek-V3 paper arXiv 2412.19437, as released in
their config.json files), DeepSeek 67B (the dense GQA model the V2 paper
compares against), a Llama-3-70B-style GQA model with its MHA counterpart, and
``nano``, the small model every CPU lesson trains.

Every inconsistent or out-of-range value raises ``ValueError`` naming the
field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

ATTN_TYPES = ("mha", "gqa", "mqa", "mla")
SCORING_FUNCS = ("softmax", "sigmoid")
ROPE_SCALING_TYPES = ("yarn",)


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"ModelConfig.{name}={value!r} is invalid: {allowed}")


@dataclass
class ModelConfig:
    """All shapes and switches of a model. See the module docstring."""

    # --- trunk --------------------------------------------------------------
    vocab_size: int = 128  # tokens in the vocabulary (rows of the embedding and of the LM head)
    hidden_size: int = 128  # d: width of the residual stream
    num_hidden_layers: int = 4  # l: transformer blocks
    intermediate_size: int = 256  # hidden width of the dense SwiGLU FFN layers
    max_position_embeddings: int = 256  # longest sequence (and longest KV cache) the model serves
    rms_norm_eps: float = 1e-6  # epsilon inside every RMSNorm of the trunk
    tie_word_embeddings: bool = False  # DeepSeek unties embedding and LM head

    # --- attention ------------------------------------------------------------
    attn_type: str = "mla"  # "mha" | "gqa" | "mqa" (baselines) or "mla" (DeepSeek)
    num_attention_heads: int = 4  # n_h: query heads
    num_key_value_heads: int | None = None  # KV heads: n_h for MHA and MLA, g for GQA, 1 for MQA (None: derived from attn_type)
    head_dim: int | None = None  # d_h: per-head width of the baselines (None: hidden_size // n_h, or qk_nope_head_dim for MLA)
    q_lora_rank: int | None = 48  # d_c': query latent width; None = direct query projection (V2-Lite)
    kv_lora_rank: int = 32  # d_c: KV latent width, the part of the MLA cache that is compressed
    qk_nope_head_dim: int = 32  # d_h: per-head query/key width without position (content part)
    qk_rope_head_dim: int = 16  # d_h^R: decoupled RoPE width (per-head q_R, one shared k_R)
    v_head_dim: int = 32  # per-head value width
    rope_theta: float = 10000.0  # RoPE base
    rope_scaling: dict | None = None  # None, or {"type": "yarn", "factor": ..., "original_max_position_embeddings": ..., ...}
    rope_interleave: bool = True  # True: rotate adjacent pairs (DeepSeek); False: rotate halves (NeoX)
    attention_dropout: float = 0.0  # dropout on attention probabilities (0 in every DeepSeek release)

    # --- mixture of experts -----------------------------------------------------
    moe_intermediate_size: int = 64  # hidden width of one fine-grained expert
    n_routed_experts: int = 8  # N_r: routed experts per MoE layer (0 = dense model, no MoE)
    n_shared_experts: int = 1  # N_s: always-on shared experts per MoE layer
    num_experts_per_tok: int = 2  # K_r: routed experts chosen per token
    n_group: int = 2  # expert groups for group-limited routing (1 = no grouping)
    topk_group: int = 1  # groups kept per token
    routed_scaling_factor: float = 1.0  # multiplies the routed gate weights (V2 16.0, V3 2.5)
    norm_topk_prob: bool = True  # renormalise the chosen k gate weights to sum to one (V3 yes, V2 no)
    scoring_func: str = "sigmoid"  # "softmax" (V2) or "sigmoid" (V3) expert affinities
    first_k_dense_replace: int = 1  # the first k layers use a dense FFN instead of MoE
    aux_loss_alpha: float = 0.0001  # alpha of V3's complementary sequence-wise balance loss (0 = off)

    # --- multi-token prediction (V3 §2.2) ------------------------------------
    num_nextn_predict_layers: int = 1  # D: MTP modules, each predicting one token further (V3: 1; 0 = none)
    mtp_loss_weight: float = 0.3  # lambda: weight of the MTP loss (V3: 0.3 early in training, then 0.1)

    def __post_init__(self) -> None:
        if not isinstance(self.attn_type, str) or self.attn_type not in ATTN_TYPES:
            _fail("attn_type", self.attn_type, f"must be one of {', '.join(ATTN_TYPES)}")
        defaults = self._derived_defaults()
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.validate()

    def _derived_defaults(self) -> dict[str, Any]:
        """What num_key_value_heads and head_dim default to for the other fields (None if not derivable)."""
        kv = 1 if self.attn_type == "mqa" else self.num_attention_heads
        if self.attn_type == "mla":
            head_dim = self.qk_nope_head_dim
        elif all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (self.hidden_size, self.num_attention_heads)):
            head_dim = self.hidden_size // self.num_attention_heads
        else:
            head_dim = None
        return {"num_key_value_heads": kv, "head_dim": head_dim}

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the first field that is wrong."""
        positive = [
            "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
            "max_position_embeddings", "num_attention_heads", "num_key_value_heads",
            "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
            "moe_intermediate_size", "num_experts_per_tok", "n_group", "topk_group",
            "head_dim",  # last: it may be derived from qk_nope_head_dim or hidden_size
        ]
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, value, "must be a positive integer")
        for name in ("n_routed_experts", "n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                _fail(name, value, "must be an integer >= 0")
        for name in ("rms_norm_eps", "rope_theta", "routed_scaling_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
                _fail(name, value, "must be a finite number > 0")
        for name in ("tie_word_embeddings", "rope_interleave", "norm_topk_prob"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "must be True or False")
        for name in ("aux_loss_alpha", "mtp_loss_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                _fail(name, value, "must be a finite number >= 0")
        p = self.attention_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            _fail("attention_dropout", p, "must be a number in [0, 1)")

        if self.attn_type not in ATTN_TYPES:
            _fail("attn_type", self.attn_type, f"must be one of {', '.join(ATTN_TYPES)}")
        n_h, n_kv = self.num_attention_heads, self.num_key_value_heads
        if n_kv > n_h:
            _fail("num_key_value_heads", n_kv, f"must be at most num_attention_heads={n_h}")
        if n_h % n_kv:
            _fail("num_key_value_heads", n_kv, f"must divide num_attention_heads={n_h} (each KV head serves a whole group of query heads)")
        if self.attn_type in ("mha", "mla") and n_kv != n_h:
            _fail("num_key_value_heads", n_kv, f"must equal num_attention_heads={n_h} for attn_type={self.attn_type!r}")
        if self.attn_type == "mqa" and n_kv != 1:
            _fail("num_key_value_heads", n_kv, "must be 1 for attn_type='mqa' (one KV head shared by all query heads)")
        if self.attn_type != "mla" and self.head_dim % 2:
            _fail("head_dim", self.head_dim, "must be even: rotary embedding rotates pairs of dimensions")
        if self.qk_rope_head_dim % 2:
            _fail("qk_rope_head_dim", self.qk_rope_head_dim, "must be even: rotary embedding rotates pairs of dimensions")
        q = self.q_lora_rank
        if q is not None and (isinstance(q, bool) or not isinstance(q, int) or q < 1):
            _fail("q_lora_rank", q, "must be a positive integer, or None for a direct query projection")

        if not isinstance(self.scoring_func, str) or self.scoring_func not in SCORING_FUNCS:
            _fail("scoring_func", self.scoring_func, f"must be one of {', '.join(SCORING_FUNCS)}")
        if self.n_routed_experts:
            if self.num_experts_per_tok > self.n_routed_experts:
                _fail("num_experts_per_tok", self.num_experts_per_tok, f"must be at most n_routed_experts={self.n_routed_experts}")
            if self.n_routed_experts % self.n_group:
                _fail("n_group", self.n_group, f"must divide n_routed_experts={self.n_routed_experts} into equal groups")
            per_group = self.n_routed_experts // self.n_group
            if self.n_group > 1 and per_group < 2:
                _fail("n_group", self.n_group, f"leaves {per_group} expert per group; a group's score sums its top-2 experts, so use at most {self.n_routed_experts // 2} groups")
            if self.topk_group > self.n_group:
                _fail("topk_group", self.topk_group, f"must be at most n_group={self.n_group}")
            if self.topk_group * per_group < self.num_experts_per_tok:
                _fail("topk_group", self.topk_group, f"keeps {self.topk_group * per_group} experts, fewer than num_experts_per_tok={self.num_experts_per_tok}; raise topk_group")
        if self.first_k_dense_replace > self.num_hidden_layers:
            _fail("first_k_dense_replace", self.first_k_dense_replace, f"must be at most num_hidden_layers={self.num_hidden_layers}")
        self._validate_rope_scaling()

    def _validate_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if rs is None:
            return
        if not isinstance(rs, dict):
            _fail("rope_scaling", rs, "must be None or a dict such as {'type': 'yarn', 'factor': 40, 'original_max_position_embeddings': 4096}")
        kind = rs.get("type", rs.get("rope_type"))
        if kind not in ROPE_SCALING_TYPES:
            _fail("rope_scaling", rs, f"'type' must be one of {', '.join(ROPE_SCALING_TYPES)}")
        factor = rs.get("factor")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
            _fail("rope_scaling", rs, "'factor' must be a number >= 1")
        orig = rs.get("original_max_position_embeddings", self.max_position_embeddings)
        if isinstance(orig, bool) or not isinstance(orig, int) or orig < 1:
            _fail("rope_scaling", rs, "'original_max_position_embeddings' must be a positive integer")
        for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            v = rs.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                _fail("rope_scaling", rs, f"'{key}' must be a number >= 0")

    # --------------------------------------------------------------- helpers
    @property
    def is_moe(self) -> bool:
        """True when some layers are mixtures of experts."""
        return self.n_routed_experts > 0 and self.first_k_dense_replace < self.num_hidden_layers

    @property
    def qk_head_dim(self) -> int:
        """Width of one MLA query/key head: content part plus RoPE part."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed.

        Fields that still hold their derived default (num_key_value_heads, head_dim)
        are derived again from the new values unless given, so changing
        num_attention_heads of an MHA or MLA model keeps one KV head per query head.
        """
        for name, default in self._derived_defaults().items():
            if name not in changes and getattr(self, name) == default:
                changes[name] = None
        return dataclasses.replace(self, **changes)

    def variant(self, attn_type: str, num_key_value_heads: int | None = None) -> ModelConfig:
        """The same model with another attention family, for comparisons.

        From an MLA config, the baseline keeps MLA's per-head width
        (``head_dim``, = qk_nope_head_dim: 128 for DeepSeek-V2/V3), which is how
        the V2 paper compares MLA with MHA.
        """
        if attn_type not in ATTN_TYPES:
            _fail("attn_type", attn_type, f"must be one of {', '.join(ATTN_TYPES)}")
        if attn_type == "gqa" and num_key_value_heads is None:
            raise ValueError("ModelConfig.num_key_value_heads=None is invalid: give the number of KV groups for attn_type='gqa'")
        return dataclasses.replace(
            self, attn_type=attn_type, num_key_value_heads=num_key_value_heads, head_dim=self.head_dim
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelConfig has no field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (see :func:`list_presets`), optionally with fields changed."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def _yarn(factor: float, mscale: float) -> dict:
    """DeepSeek's released YaRN settings (4k pretraining context stretched by `factor`)."""
    return {
        "type": "yarn", "factor": factor, "original_max_position_embeddings": 4096,
        "beta_fast": 32, "beta_slow": 1, "mscale": mscale, "mscale_all_dim": mscale,
    }


_DENSE = dict(n_routed_experts=0, n_shared_experts=0, num_experts_per_tok=1, n_group=1, topk_group=1,
              first_k_dense_replace=0, q_lora_rank=None, num_nextn_predict_layers=0, aux_loss_alpha=0.0)

PRESETS: dict[str, dict[str, Any]] = {
    # The course's CPU model: every lesson trains it in minutes on 2 cores.
    "nano": dict(),
    # A step up from nano (about 4x its parameters, twice its width, 16 experts): big enough for the
    # context-length costs MLA removes to show next to per-token overhead (bench/generate.py).
    "small": dict(
        hidden_size=256, intermediate_size=512, max_position_embeddings=4096, num_attention_heads=8,
        q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        moe_intermediate_size=64, n_routed_experts=16, n_group=4, topk_group=2,
    ),
    # DeepSeek-V2 (236B total, 21B active).
    "deepseek-v2": dict(
        vocab_size=102400, hidden_size=5120, num_hidden_layers=60, intermediate_size=12288,
        max_position_embeddings=163840, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, rope_scaling=_yarn(40, 0.707),
        moe_intermediate_size=1536, n_routed_experts=160, n_shared_experts=2, num_experts_per_tok=6,
        n_group=8, topk_group=3, routed_scaling_factor=16.0, norm_topk_prob=False,
        scoring_func="softmax", first_k_dense_replace=1, num_nextn_predict_layers=0,
    ),
    # DeepSeek-V2-Lite (15.7B total, 2.4B active): no query compression.
    "deepseek-v2-lite": dict(
        vocab_size=102400, hidden_size=2048, num_hidden_layers=27, intermediate_size=10944,
        max_position_embeddings=163840, num_attention_heads=16, q_lora_rank=None, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, rope_scaling=_yarn(40, 0.707),
        moe_intermediate_size=1408, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
        n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=False,
        scoring_func="softmax", first_k_dense_replace=1, num_nextn_predict_layers=0,
    ),
    # DeepSeek-V3 (671B total, 37B active; the MTP module adds 14B and is not counted here).
    "deepseek-v3": dict(
        vocab_size=129280, hidden_size=7168, num_hidden_layers=61, intermediate_size=18432,
        max_position_embeddings=163840, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, rope_scaling=_yarn(40, 1.0),
        moe_intermediate_size=2048, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
        n_group=8, topk_group=4, routed_scaling_factor=2.5, norm_topk_prob=True,
        scoring_func="sigmoid", first_k_dense_replace=3,
    ),
    # DeepSeek LLM 67B: the dense GQA model behind V2's "KV cache reduced by 93.3%".
    "deepseek-67b": dict(
        _DENSE, vocab_size=102400, hidden_size=8192, num_hidden_layers=95, intermediate_size=22016,
        max_position_embeddings=4096, attn_type="gqa", num_attention_heads=64, num_key_value_heads=8,
        head_dim=128,
    ),
    # A Llama-3-70B-style dense model with grouped-query attention (8 KV heads).
    "llama3-70b-gqa": dict(
        _DENSE, vocab_size=128256, hidden_size=8192, num_hidden_layers=80, intermediate_size=28672,
        max_position_embeddings=131072, attn_type="gqa", num_attention_heads=64, num_key_value_heads=8,
        head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5, rope_interleave=False,
    ),
    # The same model with plain multi-head attention: every query head has its own K and V.
    "llama3-70b-mha": dict(
        _DENSE, vocab_size=128256, hidden_size=8192, num_hidden_layers=80, intermediate_size=28672,
        max_position_embeddings=131072, attn_type="mha", num_attention_heads=64, head_dim=128,
        rope_theta=500000.0, rms_norm_eps=1e-5, rope_interleave=False,
    ),
}


def list_presets() -> list[str]:
    """Names accepted by :meth:`ModelConfig.from_preset`."""
    return list(PRESETS)


__all__ = ["ModelConfig", "list_presets", "PRESETS", "ATTN_TYPES", "SCORING_FUNCS"]
