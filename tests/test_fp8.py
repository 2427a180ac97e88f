"""mlakit.fp8: E4M3 casts, tile and block scales on constructed inputs, error bounds, outliers kept in their tile,
the narrow and promoted accumulators against hand sums, the simulated GEMM, and FP8 training's module swap."""

import pytest
import torch
from torch import nn

from mlakit import ModelConfig, fp8
from mlakit.model import MiniDeepSeek


def _heavy_tailed(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.exp(2 * torch.randn(rows, cols, generator=g))


# ------------------------------------------------------------------ casts
def test_cast_saturates_and_rounds_to_nearest_even():
    x = torch.tensor([449.0, 1e6, -1e6, float("inf"), 1.0625, 1.1875, -1.1875, 240.0, 2.0**-9, 2.0**-10])
    got = fp8.round_e4m3(x).tolist()
    # 1.0625 is halfway between 1.0 and 1.125: the even mantissa (1.0) wins; 1.1875 between 1.125 and 1.25: 1.25
    assert got == [448.0, 448.0, -448.0, 448.0, 1.0, 1.25, -1.25, 240.0, 2.0**-9, 0.0]
    assert fp8.cast_e4m3(x).dtype == torch.float8_e4m3fn


# ------------------------------------------------------------------ scales on constructed inputs
def test_block_scales_are_exact_on_constructed_inputs():
    # a 256 x 384 weight in 128 x 128 blocks; block (i, j) has max |x| = 448 * 2^(i + j) * 3 / 2
    x = torch.zeros(256, 384)
    for i in range(2):
        for j in range(3):
            block = torch.linspace(-1, 1, 128 * 128).view(128, 128) * 448 * 2.0 ** (i + j)
            block[5, 7] = -448 * 2.0 ** (i + j) * 1.5  # the block's max |x|, negative
            x[128 * i:128 * (i + 1), 128 * j:128 * (j + 1)] = block
    q = fp8.quantize(x, (128, 128))
    want = torch.tensor([[1.5 * 2.0 ** (i + j) for j in range(3)] for i in range(2)])
    assert torch.equal(q.scale, want)
    assert q.data.float()[5, 7] == -448.0 and q.data.float()[133, 135] == -448.0  # each block's max lands on 448
    assert q.scale.dtype == torch.float32 and q.data.shape == (256, 384)


def test_activation_tiles_are_one_row_by_128_columns():
    x = torch.arange(1, 2 * 256 + 1, dtype=torch.float32).view(2, 256)  # row r, tile t: max at its last column
    q = fp8.quantize(x, fp8.ACTIVATION_TILE)
    assert q.scale.shape == (2, 2)
    torch.testing.assert_close(q.scale, torch.tensor([[128.0, 256.0], [384.0, 512.0]]) / 448, rtol=0, atol=0)


def test_per_tensor_scale_and_partial_tiles():
    x = _heavy_tailed(3, 200)
    q = fp8.quantize_per_tensor(x)
    assert q.scale.shape == (1, 1) and q.scale.item() == pytest.approx(x.abs().max().item() / 448, rel=1e-7)
    tiles = fp8.quantize(x, (1, 128))  # 200 columns: a full tile and a tile of 72
    assert tiles.scale.shape == (3, 2)
    torch.testing.assert_close(tiles.scale[:, 1], x[:, 128:].abs().amax(1) / 448)
    assert fp8.dequantize(tiles).shape == (3, 200)


def test_a_tile_of_zeros_gets_scale_one_and_no_nan():
    x = torch.zeros(2, 256)
    x[1, 130] = 3.0
    q = fp8.quantize(x)
    assert q.scale[0].tolist() == [1.0, 1.0] and q.scale[1, 0].item() == 1.0
    out = fp8.dequantize(q)
    assert not torch.isnan(out).any() and out[1, 130].item() == 3.0


# ------------------------------------------------------------------ error bounds
@pytest.mark.parametrize("tile", [(1, 128), (128, 128), (256, 512)])
def test_quantisation_error_is_within_half_an_e4m3_step(tile):
    x = _heavy_tailed(256, 512, seed=1)
    q = fp8.quantize(x, tile)
    s = q.scale_per_element()
    err = (fp8.dequantize(q) - x).abs()
    # normals: half a step of 3 mantissa bits, 2^-4 relative; subnormals: half the smallest step, 2^-10 x scale
    bound = torch.maximum(x.abs() * 2.0**-4, s * 2.0**-10) * (1 + 1e-6)
    assert bool((err <= bound).all())
    assert bool((fp8.dequantize(q).abs() <= s * 448 * (1 + 1e-6)).all())  # nothing beyond the tile's range


def test_finer_tiles_give_smaller_error_on_outlier_channels():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(128, 1024, generator=g)
    x[:, [3, 500, 900]] *= 100  # outlier channels, as LLM activations have
    errors = {name: fp8.relative_error(fp8.fake_quantize(x, tile), x)
              for name, tile in (("tensor", x.shape), ("row", (1, 1024)), ("1x128", (1, 128)))}
    assert errors["1x128"] < errors["row"] <= errors["tensor"]
    assert errors["1x128"] < 0.7 * errors["tensor"]


def test_an_outlier_only_changes_its_own_tile():
    x = _heavy_tailed(4, 512, seed=3).clamp(-5, 5)
    spiked = x.clone()
    spiked[2, 300] = 1e6  # row 2, tile 2 (columns 256..383)
    before, after = fp8.quantize(x), fp8.quantize(spiked)
    changed = (before.scale != after.scale).nonzero().tolist()
    assert changed == [[2, 2]]
    inside = torch.zeros_like(x, dtype=torch.bool)
    inside[2, 256:384] = True
    assert torch.equal(before.data.float()[~inside], after.data.float()[~inside])  # every other tile bit for bit
    # per-tensor scaling: the one outlier pushes every other value into the subnormals or to 0
    t_before, t_after = fp8.quantize_per_tensor(x), fp8.quantize_per_tensor(spiked)
    assert fp8.relative_error(fp8.dequantize(t_after)[~inside], x[~inside]) > \
        10 * fp8.relative_error(fp8.dequantize(t_before)[~inside], x[~inside])


# ------------------------------------------------------------------ accumulation
def test_round_mantissa_by_hand():
    x = torch.tensor([1.0625, 1.1875, -1.1875, 17.0, 0.0])
    assert fp8.round_mantissa(x, 4, "truncate").tolist() == [1.0, 1.125, -1.125, 16.0, 0.0]
    assert fp8.round_mantissa(x, 4, "nearest").tolist() == [1.0, 1.25, -1.25, 16.0, 0.0]
    assert fp8.round_mantissa(torch.tensor([1 + 2.0**-13]), 14).item() == 1 + 2.0**-13  # 14 bits keep 2^-13
    assert fp8.round_mantissa(torch.tensor([1 + 2.0**-14]), 14).item() == 1.0


def test_a_narrow_accumulator_stalls_and_promotion_rescues_it():
    ones = torch.ones(2, 32)
    # 4 significant bits hold the integers up to 16; 16 + 1 = 17 needs 5 and truncates back to 16
    assert fp8.accumulate(ones, 4, promote_every=None).tolist() == [16.0, 16.0]
    assert fp8.accumulate(ones, 4, promote_every=16).tolist() == [32.0, 32.0]  # two chunks of 16, summed in fp64
    assert fp8.accumulate(ones, 4, promote_every=8).tolist() == [32.0, 32.0]
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 100, generator=g).double()
    torch.testing.assert_close(fp8.accumulate(p, 53, promote_every=None), p.sum(-1), rtol=1e-12, atol=1e-12)


def test_gemm_accumulators_against_exact_products():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(8, 1024, generator=g), torch.randn(8, 1024, generator=g) * 0.05
    qa, qb = fp8.quantize(a), fp8.quantize(b, fp8.WEIGHT_BLOCK)
    exact = fp8.dequantize(qa).double() @ fp8.dequantize(qb).double().T  # the quantised operands, summed exactly
    torch.testing.assert_close(fp8.fp8_gemm(a, b, accumulator="fp32").double(), exact, rtol=1e-5, atol=1e-5)
    wide = fp8.fp8_gemm(a, b, accumulator="promoted", accumulator_bits=53)
    torch.testing.assert_close(wide.double(), exact, rtol=1e-5, atol=1e-5)
    promoted = fp8.relative_error(fp8.fp8_gemm(a, b, accumulator="promoted"), exact)
    rows = dict(tile_a=(1, 1024), tile_b=(1, 1024))  # row-wise scales: constant along K, as "narrow" needs
    exact_rows = fp8.fake_quantize(a, (1, 1024)).double() @ fp8.fake_quantize(b, (1, 1024)).double().T
    narrow = fp8.relative_error(fp8.fp8_gemm(a, b, accumulator="narrow", **rows), exact_rows)
    wide_narrow = fp8.fp8_gemm(a, b, accumulator="narrow", accumulator_bits=53, **rows)
    torch.testing.assert_close(wide_narrow.double(), exact_rows, rtol=1e-5, atol=1e-5)
    assert promoted < narrow / 5  # promotion every 128 cuts the narrow accumulator's error
    assert 1e-3 < narrow < 0.2
    # promoting once per K is the narrow accumulator
    once = fp8.fp8_gemm(a, b, accumulator="promoted", promote_every=1024, **rows)
    torch.testing.assert_close(once, fp8.fp8_gemm(a, b, accumulator="narrow", **rows), rtol=1e-6, atol=1e-6)


def test_gemm_quantisation_error_matches_the_e4m3_scale_of_things():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(64, 512, generator=g), torch.randn(32, 512, generator=g)
    a[:, [10, 300]] *= 50
    exact = a.double() @ b.double().T
    tiles = fp8.relative_error(fp8.fp8_gemm(a, b, accumulator="fp32"), exact)
    tensor = fp8.relative_error(fp8.fp8_gemm(a, b, tile_a=a.shape, tile_b=b.shape, accumulator="fp32"), exact)
    assert 0.005 < tiles < tensor < 0.1


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call, words", [
    (lambda: fp8.quantize(torch.ones(4), (1, 128)), "x must be a 2-D"),
    (lambda: fp8.quantize(torch.ones(2, 2), (0, 128)), "tile=(0, 128)"),
    (lambda: fp8.quantize(torch.tensor([[1.0, float("nan")]])), "x holds inf or NaN"),
    (lambda: fp8.fp8_gemm(torch.ones(2, 8), torch.ones(3, 4)), "b has 4 columns"),
    (lambda: fp8.fp8_gemm(torch.ones(2, 8), torch.ones(3, 8), accumulator="bf16"), "accumulator='bf16'"),
    (lambda: fp8.fp8_gemm(torch.ones(2, 256), torch.ones(3, 256), promote_every=256), "promote_every=256"),
    (lambda: fp8.fp8_gemm(torch.ones(2, 256), torch.ones(3, 256), accumulator="narrow"), "tile_a=(1, 128)"),
    (lambda: fp8.round_mantissa(torch.ones(1), 1), "bits=1"),
    (lambda: fp8.accumulate(torch.ones(2, 4), rounding="up"), "rounding='up'"),
    (lambda: fp8.accumulate(torch.ones(2, 4), promote_every=0), "promote_every=0"),
])
def test_bad_input_names_the_argument(call, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        call()


# ------------------------------------------------------------------ training
def test_fp8_linear_gradients_are_close_to_fp32():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(16, 256, generator=g, requires_grad=True)
    w = (torch.randn(64, 256, generator=g) * 0.05).requires_grad_()
    y = fp8.fp8_linear(x, w)
    (y * torch.arange(64.0)).sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    (x @ w.T * torch.arange(64.0)).sum().backward()
    assert 0 < fp8.relative_error(y, x.detach() @ w.detach().T) < 0.06
    assert 0 < fp8.relative_error(gx, x.grad) < 0.06 and 0 < fp8.relative_error(gw, w.grad) < 0.06


def test_fp8_training_swaps_linears_and_experts_then_restores_them():
    torch.manual_seed(0)
    model = MiniDeepSeek(ModelConfig.from_preset("nano"))
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        ref = model(ids).logits
    params = [p for p in model.parameters()]
    with fp8.fp8_training(model) as swapped:
        assert "lm_head" not in swapped and "layers.0.self_attn.q_a_proj" in swapped
        assert "layers.1.mlp.experts" in swapped and "mtp.0.eh_proj" in swapped
        assert isinstance(model.layers[0].self_attn.o_proj, fp8.FP8Linear)
        assert isinstance(model.lm_head, nn.Linear)
        assert [p for p in model.parameters()] == params  # the same master weights
        out = model(ids).logits
        out.float().pow(2).mean().backward()
    assert isinstance(model.layers[0].self_attn.o_proj, nn.Linear)
    assert "forward" not in vars(model.layers[1].mlp.experts)
    assert 0 < fp8.relative_error(out.detach(), ref) < 0.1
    assert model.layers[1].mlp.experts.gate_up_proj.grad is not None
    assert model.layers[0].self_attn.q_a_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref)  # restored: full precision again


def test_bytes_per_element():
    assert fp8.bytes_per_element((1, 128)) == 1 + 4 / 128
    assert fp8.bytes_per_element((128, 128)) == 1 + 4 / 16384
    q = fp8.quantize(torch.ones(4, 256))
    assert q.nbytes() == 4 * 256 + 8 * 4


@pytest.mark.parametrize("shape, tile", [((64, 256), (1, 128)), ((192, 48), (128, 128)), ((37, 300), (1, 128)),
                                         ((300, 37), (128, 128)), ((5, 7), (5, 7))])
def test_the_training_path_quantises_as_the_checked_one(shape, tile):
    x = _heavy_tailed(*shape, seed=7)
    assert torch.equal(fp8._fake_quantize_fast(x, tile), fp8.fake_quantize(x, tile))
    assert torch.equal(fp8._fake_quantize_fast(x.T, tile), fp8.fake_quantize(x.T.contiguous(), tile))
