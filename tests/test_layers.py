import math

import pytest
import torch

from mlakit import ModelConfig
from mlakit.layers import (
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary,
    rope_inv_freq,
    softmax_scale,
    yarn_mscale,
)


def test_rmsnorm_matches_its_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("x_dtype, w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                              (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)])
def test_rmsnorm_through_the_kernel_registry_is_bit_identical_to_the_inline_forward(x_dtype, w_dtype):
    """The lessons' stored outputs depend on these exact numerics: x in float32, cast back, times the weight."""
    torch.manual_seed(0)
    norm = RMSNorm(24, eps=1e-6).to(w_dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(3, 7, 24) * 2).to(x_dtype)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    expected = norm.weight * h.to(x_dtype)  # RMSNorm.forward before the registry
    for backend in (None, "auto", "torch"):
        out = norm(x, backend=backend)
        assert out.dtype == expected.dtype
        assert torch.equal(out, expected)
    assert norm.backend == "auto" and RMSNorm(4, backend="torch").backend == "torch"
    with pytest.raises(ValueError, match="backend='gpu'"):
        RMSNorm(4, backend="gpu")


def test_swiglu_matches_its_formula():
    torch.manual_seed(0)
    mlp = SwiGLU(8, 12)
    x = torch.randn(2, 3, 8)
    g = x @ mlp.gate_proj.weight.T
    expected = (g * torch.sigmoid(g) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    torch.testing.assert_close(mlp(x), expected)


@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("rope_scaling", [None, {"type": "yarn", "factor": 4, "original_max_position_embeddings": 64,
                                                 "mscale": 1.0, "mscale_all_dim": 0.8}])
def test_rope_scores_depend_only_on_relative_position(interleave, rope_scaling):
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, interleave=interleave, rope_scaling=rope_scaling)
    q, k = torch.randn(16), torch.randn(16)

    def score(m, n):
        qm = rope(q[None], torch.tensor([m]))[0]
        kn = rope(k[None], torch.tensor([n]))[0]
        return (qm @ kn).item()

    assert score(3, 1) == pytest.approx(score(12, 10), rel=1e-4, abs=1e-5)
    assert score(7, 7) == pytest.approx(score(0, 0), rel=1e-4, abs=1e-5)
    assert score(5, 0) != pytest.approx(score(0, 0), rel=1e-3)


def test_rope_preserves_norm_and_position_zero_is_identity():
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 3, 8)
    out = rope(x, torch.arange(3))
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(out[:, 0], x[:, 0])


def test_rope_conventions_differ_by_a_permutation():
    """Interleaved pairs (x0,x1),(x2,x3).. equal the halves convention on a permuted vector."""
    torch.manual_seed(0)
    d = 8
    x = torch.randn(4, d)
    pos = torch.arange(4)
    perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # interleaved -> halves layout
    inter = RotaryEmbedding(d, interleave=True)(x, pos)
    halves = RotaryEmbedding(d, interleave=False)(x[:, perm], pos)
    torch.testing.assert_close(inter[:, perm], halves)


def test_apply_rotary_by_hand_for_one_pair():
    x = torch.tensor([1.0, 0.0])
    theta = torch.tensor([math.pi / 2])
    out = apply_rotary(x, theta.cos(), theta.sin(), interleave=True)
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)


def test_yarn_numbers_from_reference():
    # V3: mscale = 0.1 ln(40) + 1 = 1.3689; scale = 192^-0.5 * mscale^2 = 0.13523
    assert yarn_mscale(40) == pytest.approx(1.3689, abs=1e-4)
    v3 = ModelConfig.from_preset("deepseek-v3")
    assert softmax_scale(v3.qk_head_dim, v3.rope_scaling) == pytest.approx(0.13523, abs=1e-5)
    assert softmax_scale(192) == pytest.approx(192**-0.5)
    assert yarn_mscale(1.0) == 1.0


def test_yarn_keeps_high_frequencies_and_interpolates_low_ones():
    plain, f0 = rope_inv_freq(64, 10000.0)
    scaled, f1 = rope_inv_freq(64, 10000.0, {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                              "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})
    assert f0 == 1.0 and f1 == pytest.approx(1.0)  # V3: mscale == mscale_all_dim gives attention factor 1
    torch.testing.assert_close(scaled[:4], plain[:4])  # fastest dims untouched
    torch.testing.assert_close(scaled[-4:], plain[-4:] / 40)  # slowest dims interpolated
    _, f2 = rope_inv_freq(64, 10000.0, {"type": "yarn", "factor": 40})
    assert f2 == pytest.approx(yarn_mscale(40))  # no mscale given: the YaRN default factor


def test_rope_rejects_odd_dims():
    with pytest.raises(ValueError, match="dim=7"):
        RotaryEmbedding(7)
