"""Parameter counts from a config: the one counter the model, the dashboard, the checkers and the lessons use.

What counts: every trainable tensor (``nn.Parameter``) of :class:`mlakit.model.MiniDeepSeek`
built from the config, part by part, without building it (instant even for DeepSeek-V3,
whose construction takes seconds on the meta device). ``tests/test_params.py`` checks
the formula against the real module's tensors for several configs.

Conventions, named once here:

- The balancing bias ``e_score_correction_bias`` is a buffer, not a parameter: the
  optimizer never touches it (V3 §2.1.2 moves it by a sign rule), so it is not counted
  (E numbers per MoE layer: 58 * 256 = 14,848 for V3, invisible at 671B).
- **Active** parameters are those one token uses: the shared experts and
  ``num_experts_per_tok`` of the routed experts of each MoE layer, everything else
  in full, the embedding table and the router included (a token reads one row of
  the embedding, but the papers' 37B / 21B count it whole).
- The MTP modules are left out unless ``include_mtp`` (the papers' 671B leaves V3's
  14B MTP module out); their embedding and output head are shared with the main
  model and counted once.
"""

from __future__ import annotations

from .config import ModelConfig

PARTS = ("embedding + LM head", "attention", "RMSNorms", "dense FFN layers", "routers", "shared experts",
         "routed experts", "MTP modules")


def swiglu_parameters(hidden_size: int, width: int) -> int:
    """gate_proj and up_proj (hidden -> width) and down_proj (width -> hidden), no biases."""
    return 3 * hidden_size * width


def attention_parameters(config: ModelConfig) -> int:
    """One attention layer's projections (and MLA's two latent RMSNorms), as mlakit.mla / mlakit.attention build them."""
    c, d = config, config.hidden_size
    if c.attn_type != "mla":
        return 2 * d * c.num_attention_heads * c.head_dim + 2 * d * c.num_key_value_heads * c.head_dim  # q, o; k, v
    n_h, qk = c.num_attention_heads, c.qk_head_dim
    if c.q_lora_rank is None:
        q = d * n_h * qk  # q_proj
    else:
        q = d * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * n_h * qk  # q_a_proj, q_a_layernorm, q_b_proj
    kv = (d * (c.kv_lora_rank + c.qk_rope_head_dim)  # kv_a_proj_with_mqa: latent and shared rope key
          + c.kv_lora_rank  # kv_a_layernorm
          + c.kv_lora_rank * n_h * (c.qk_nope_head_dim + c.v_head_dim))  # kv_b_proj
    return q + kv + n_h * c.v_head_dim * d  # + o_proj


def is_moe_layer(config: ModelConfig, layer_idx: int) -> bool:
    """Whether block ``layer_idx`` has DeepSeekMoE (the first first_k_dense_replace blocks are dense)."""
    return config.n_routed_experts > 0 and layer_idx >= config.first_k_dense_replace


def _ffn(config: ModelConfig, layer_idx: int) -> dict[str, tuple[int, int]]:
    """(total, active) of one block's FFN, by part."""
    c, d = config, config.hidden_size
    if not is_moe_layer(c, layer_idx):
        dense = swiglu_parameters(d, c.intermediate_size)
        return {"dense FFN layers": (dense, dense)}
    expert = swiglu_parameters(d, c.moe_intermediate_size)
    shared = c.n_shared_experts * expert
    return {"routers": (c.n_routed_experts * d,) * 2, "shared experts": (shared, shared),
            "routed experts": (c.n_routed_experts * expert, c.num_experts_per_tok * expert)}


def parameter_counts(config: ModelConfig, include_mtp: bool = False) -> dict[str, tuple[int, int]]:
    """{part: (total, active per token)} for the parts in :data:`PARTS` (see the module docstring)."""
    c, d, L = config, config.hidden_size, config.num_hidden_layers
    counts = dict.fromkeys(PARTS, (0, 0))

    def add(part: str, total: int, active: int | None = None) -> None:
        t, a = counts[part]
        counts[part] = (t + total, a + (total if active is None else active))

    add("embedding + LM head", c.vocab_size * d * (1 if c.tie_word_embeddings else 2))
    add("attention", L * attention_parameters(c))
    add("RMSNorms", (2 * L + 1) * d)  # two per block and the final one
    for i in range(L):
        for part, (total, active) in _ffn(c, i).items():
            add(part, total, active)
    if include_mtp:
        for k in range(c.num_nextn_predict_layers):
            own = 2 * d * d + 3 * d + attention_parameters(c) + 2 * d  # eh_proj; enorm, hnorm, head norm; block
            ffn = _ffn(c, L + k)
            add("MTP modules", own + sum(t for t, _ in ffn.values()), own + sum(a for _, a in ffn.values()))
    return counts


def count_parameters(config: ModelConfig, active: bool = False, include_mtp: bool = False) -> int:
    """Total (or, with ``active``, per-token) parameters of MiniDeepSeek(config)."""
    return sum(a if active else t for t, a in parameter_counts(config, include_mtp).values())


def ffn_active_parameters(config: ModelConfig) -> int:
    """Feed-forward parameters one token uses (dense FFNs, routers, shared and k routed experts), MTP excluded."""
    parts = parameter_counts(config)
    return sum(parts[p][1] for p in ("dense FFN layers", "routers", "shared experts", "routed experts"))


__all__ = ["PARTS", "parameter_counts", "count_parameters", "ffn_active_parameters", "attention_parameters",
           "swiglu_parameters", "is_moe_layer"]
