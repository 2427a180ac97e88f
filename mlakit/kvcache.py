"""KV-cache size theory: how many numbers each attention design keeps per token.

Per token and per layer (DeepSeek-V2 §2.1.4, Table 1):

=========  ==========================  ===================================
design     elements cached             why
=========  ==========================  ===================================
MHA        2 n_h d_h                   a key and a value for every head
GQA        2 g d_h                     one key and value per group of heads
MQA        2 d_h                       one key and value shared by all heads
MLA        d_c + d_h^R                 the KV latent plus the shared RoPE key
=========  ==========================  ===================================

``"mla-expanded"`` is what an MLA model would cache if it kept the keys and
values expanded from the latent (n_h (d_h + d_h^R) for keys, n_h d_v for
values): the baseline the absorbed decode path avoids.

Everything here is arithmetic on a :class:`~mlakit.ModelConfig`; the caches in
:mod:`mlakit.attention` and :mod:`mlakit.mla` allocate exactly these sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ModelConfig

KINDS = ("mha", "gqa", "mqa", "mla", "mla-expanded")
GQA_DEFAULT_GROUPS = 8  # KV heads of Llama-3-70B and DeepSeek 67B: the usual GQA setting to compare against
DTYPE_BITS = {"fp32": 32, "float32": 32, "bf16": 16, "bfloat16": 16, "fp16": 16, "float16": 16,
              "fp8": 8, "float8": 8}


def dtype_bits(dtype: str | int | object) -> int:
    """Bits per element for "fp32", "bf16", "fp16", "fp8", a torch dtype, or a bit width such as 6."""
    if isinstance(dtype, bool):
        raise ValueError(f"dtype={dtype!r} is invalid: use one of {', '.join(DTYPE_BITS)} or a bit width 1..64")
    if isinstance(dtype, int):
        if not 1 <= dtype <= 64:
            raise ValueError(f"dtype={dtype!r} is invalid: a bit width must be between 1 and 64")
        return dtype
    if isinstance(dtype, str):
        if dtype not in DTYPE_BITS:
            raise ValueError(f"dtype={dtype!r} is invalid: use one of {', '.join(DTYPE_BITS)} or a bit width 1..64")
        return DTYPE_BITS[dtype]
    itemsize = getattr(dtype, "itemsize", None)  # torch.dtype
    if isinstance(itemsize, int):
        return 8 * itemsize
    raise ValueError(f"dtype={dtype!r} is invalid: use one of {', '.join(DTYPE_BITS)} or a bit width 1..64")


def elements_per_token(config: ModelConfig, attn_type: str | None = None,
                       num_key_value_heads: int | None = None) -> int:
    """Cached elements per token per layer for ``config`` (or for it with another attention kind).

    ``attn_type`` defaults to ``config.attn_type``; ``num_key_value_heads``
    overrides the number of groups for "gqa". The baselines use ``config.head_dim``
    (for an MLA config that is qk_nope_head_dim, d_h in the papers).
    """
    kind = attn_type or config.attn_type
    if kind not in KINDS:
        raise ValueError(f"attn_type={kind!r} is invalid: must be one of {', '.join(KINDS)}")
    n_h, d_h = config.num_attention_heads, config.head_dim
    if kind == "mha":
        return 2 * n_h * d_h
    if kind == "gqa":
        g = num_key_value_heads or config.num_key_value_heads
        return 2 * g * d_h
    if kind == "mqa":
        return 2 * d_h
    if kind == "mla":
        return config.kv_lora_rank + config.qk_rope_head_dim
    return n_h * (config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim)  # mla-expanded


def elements_per_token_all_layers(config: ModelConfig, attn_type: str | None = None,
                                  num_key_value_heads: int | None = None) -> int:
    """Cached elements per token summed over every layer."""
    return elements_per_token(config, attn_type, num_key_value_heads) * config.num_hidden_layers


def cache_bytes(config: ModelConfig, seq_len: int, batch_size: int = 1, dtype: str | int | object = "bf16",
                attn_type: str | None = None, num_key_value_heads: int | None = None) -> int:
    """Bytes of the whole cache (all layers) for ``batch_size`` sequences of ``seq_len`` tokens.

    With a bit width that is not a multiple of 8 the total is rounded up to whole bytes.
    """
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} is invalid: must be an integer >= 0")
    bits = elements_per_token_all_layers(config, attn_type, num_key_value_heads) * seq_len * batch_size * dtype_bits(dtype)
    return math.ceil(bits / 8)


def bytes_per_token(config: ModelConfig, dtype: str | int | object = "bf16", attn_type: str | None = None,
                    num_key_value_heads: int | None = None) -> int | float:
    """Bytes one token occupies in the cache across all layers (may be fractional below 8 bits)."""
    bits = elements_per_token_all_layers(config, attn_type, num_key_value_heads) * dtype_bits(dtype)
    return bits // 8 if bits % 8 == 0 else bits / 8


def equivalent_gqa_groups(config: ModelConfig) -> float:
    """How many GQA groups cache as much as this MLA config: (d_c + d_h^R) / (2 d_h). V2: 2.25."""
    return elements_per_token(config, "mla") / (2 * config.head_dim)


def ratio_to_mha(config: ModelConfig, attn_type: str | None = None) -> float:
    """How many times larger plain MHA's cache is than this design's (V3 with MLA: 56.9)."""
    return elements_per_token(config, "mha") / elements_per_token(config, attn_type)


@dataclass(frozen=True)
class HeadlineDecomposition:
    """DeepSeek-V2's "KV cache reduced by 93.3%" against DeepSeek 67B, split into its two causes."""

    v2_elements_per_token: int  # all layers, MLA
    dense67b_elements_per_token: int  # all layers, GQA with 8 KV heads
    v2_bits: int  # precision of the deployed V2 cache (about 6 bits)
    dense67b_bits: int  # bf16
    architecture_saving: float  # 1 - elements ratio: what MLA saves at equal precision (~82%)
    quantisation_saving: float  # 1 - bits ratio: what the low-precision cache saves on top
    total_saving: float  # 1 - bytes ratio: the headline (~93.3%)


def decompose_v2_headline(v2_bits: int = 6, dense_bits: int = 16) -> HeadlineDecomposition:
    """Split V2's 93.3% cache reduction into architecture (MLA) and quantisation (6-bit cache)."""
    v2 = ModelConfig.from_preset("deepseek-v2")
    dense = ModelConfig.from_preset("deepseek-67b")
    e_v2 = elements_per_token_all_layers(v2)
    e_dense = elements_per_token_all_layers(dense)
    arch = 1 - e_v2 / e_dense
    quant = 1 - v2_bits / dense_bits
    total = 1 - (e_v2 * v2_bits) / (e_dense * dense_bits)
    return HeadlineDecomposition(e_v2, e_dense, v2_bits, dense_bits, arch, quant, total)


def default_gqa_groups(config: ModelConfig) -> int:
    """KV heads to use for a GQA comparison: the config's own for a GQA model, else 8 (at most n_h)."""
    if config.attn_type == "gqa":
        return config.num_key_value_heads
    return min(GQA_DEFAULT_GROUPS, config.num_attention_heads)


def comparison_table(config: ModelConfig, seq_len: int = 128 * 1024, dtype: str | int = "bf16",
                     kinds: tuple[str, ...] | None = None) -> list[dict]:
    """Rows of per-design cache figures for one model: a list of dicts, ready for printing or pandas.

    Columns: kind, elements per token per layer, bytes per token (all layers),
    GB for one sequence of ``seq_len`` tokens, and the ratio MHA / this design.
    """
    if kinds is None:
        kinds = ("mha", "gqa", "mqa", "mla") if config.attn_type == "mla" else ("mha", "gqa", "mqa")
    rows = []
    for kind in kinds:
        groups = default_gqa_groups(config)
        g = groups if kind == "gqa" else None
        label = f"gqa (g={groups})" if kind == "gqa" else kind
        rows.append({
            "attention": label,
            "elements/token/layer": elements_per_token(config, kind, g),
            "bytes/token": bytes_per_token(config, dtype, kind, g),
            "GB @ context": cache_bytes(config, seq_len, 1, dtype, kind, g) / 1e9,
            "MHA / this": elements_per_token(config, "mha") / elements_per_token(config, kind, g),
        })
    return rows


def format_table(rows: list[dict], floatfmt: str = ".2f") -> str:
    """A plain-text table of rows of dicts (no extra dependencies)."""
    if not rows:
        return ""
    cols = list(rows[0])
    def cell(v) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v)
        return f"{v:,{floatfmt}}" if isinstance(v, float) else f"{v:,}"

    cells = [[cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
