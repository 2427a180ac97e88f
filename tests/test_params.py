"""The one parameter counter: its formula against the real module's tensors, and the papers' totals."""

import pytest
import torch

from mlakit import ModelConfig
from mlakit.model import MiniDeepSeek
from mlakit.moe import iter_moe_layers
from mlakit.params import PARTS, count_parameters, ffn_active_parameters, parameter_counts

CONFIGS = {
    "nano": ModelConfig.from_preset("nano"),
    "small": ModelConfig.from_preset("small"),
    "no_q_lora_tied": ModelConfig.from_preset("nano", q_lora_rank=None, tie_word_embeddings=True),
    "dense": ModelConfig.from_preset("nano", n_routed_experts=0, n_shared_experts=0),
    "mha": ModelConfig.from_preset("nano").variant("mha"),
    "gqa_all_moe": ModelConfig.from_preset("nano", first_k_dense_replace=0).variant("gqa", 2),
    "two_mtp": ModelConfig.from_preset("nano", num_nextn_predict_layers=2, n_shared_experts=2),
}


def _tensor_counts(model: MiniDeepSeek) -> tuple[int, int]:
    """Parameters of the real module, counted tensor by tensor: (without the MTP modules, with them)."""
    mtp = {id(p) for p in model.mtp.parameters()}
    shared = {id(model.embed_tokens.weight), id(model.lm_head.weight)}
    unique = {id(p): p for p in model.parameters()}
    main = sum(p.numel() for i, p in unique.items() if i not in mtp or i in shared)
    return main, sum(p.numel() for p in unique.values())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_formula_equals_the_modules_tensors(name):
    cfg = CONFIGS[name]
    with torch.device("meta"):
        model = MiniDeepSeek(cfg)
    main, with_mtp = _tensor_counts(model)
    assert count_parameters(cfg) == model.num_parameters() == main
    assert count_parameters(cfg, include_mtp=True) == with_mtp
    # active = total minus the routed experts a token skips, in every MoE layer (MTP blocks too)
    skipped = sum(m.experts.gate_up_proj.numel() + m.experts.down_proj.numel() for m in iter_moe_layers(model.layers))
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    skipped = skipped * (E - k) // E if E else 0
    assert count_parameters(cfg, active=True) == main - skipped
    # the balancing bias is a buffer, not a parameter
    assert all("e_score_correction_bias" not in n for n, _ in model.named_parameters())
    assert set(parameter_counts(cfg)) == set(PARTS)


def test_the_papers_totals_and_the_ffn_share():
    v3 = ModelConfig.from_preset("deepseek-v3")
    assert count_parameters(v3) == pytest.approx(671e9, rel=0.001)
    assert count_parameters(v3, active=True) == pytest.approx(37.6e9, rel=0.005)
    v2 = ModelConfig.from_preset("deepseek-v2")
    assert count_parameters(v2) == pytest.approx(235.7e9, rel=0.001)
    assert count_parameters(v2, active=True) == pytest.approx(21.4e9, rel=0.005)
    # V3's MTP module: about 11.5B of its own (14B in the release counts stored copies of embedding and head)
    mtp = count_parameters(v3, include_mtp=True) - count_parameters(v3)
    assert 11e9 < mtp < 12e9
    parts = parameter_counts(v3)
    assert ffn_active_parameters(v3) == sum(parts[p][1] for p in ("dense FFN layers", "routers", "shared experts",
                                                                 "routed experts"))
