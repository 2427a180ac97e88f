"""The kernel registry and every torch reference against an independent formula, over odd shapes."""

import math

import pytest
import torch
import torch.nn.functional as F

from mlakit import ModelConfig, kernels
from mlakit.kernels import BackendUnavailableError, registry
from mlakit.kernels.mla_decode import mla_decode_torch
from mlakit.kernels.moe_experts import moe_experts_loop, moe_experts_sorted, moe_experts_torch
from mlakit.kernels.rmsnorm import rmsnorm_torch
from mlakit.layers import RMSNorm
from mlakit.model import MiniDeepSeek
from mlakit.moe import DeepSeekMoE

pytestmark = pytest.mark.usefixtures("one_thread")

OPS = ("mla_decode", "moe_experts", "rmsnorm")
REFERENCES = {"rmsnorm": rmsnorm_torch, "mla_decode": mla_decode_torch, "moe_experts": moe_experts_torch}
TOLERANCES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2), (torch.float16, 2e-3, 2e-3)]


# ------------------------------------------------------------------ registry
@pytest.fixture
def toy_op(monkeypatch):
    """A registered op "toy" with a torch reference and a fake Triton kernel, removed afterwards."""
    monkeypatch.setitem(registry._KERNELS, "toy", {})
    registry.register("toy", "torch", lambda x: x + 1)
    registry.register("toy", "triton")(lambda x: x + 2)  # the decorator form
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return "toy"


def test_every_op_has_its_torch_reference_and_auto_falls_back_to_it(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert set(OPS) <= set(kernels.ops())
    for op in OPS:
        assert kernels.get(op, backend="torch") is REFERENCES[op]
        assert "torch" in kernels.available(op)
        if "triton" not in registry._KERNELS[op]:  # no Triton kernel yet: auto is the reference everywhere
            assert kernels.available(op) == ("torch",)
            assert kernels.get(op) is kernels.get(op, "auto", "cuda") is REFERENCES[op]
            assert kernels.resolve(op, "auto") == "torch"


def test_unknown_ops_and_backends_are_named():
    with pytest.raises(ValueError, match=r"unknown kernel op 'softmax': registered ops are .*rmsnorm"):
        kernels.get("softmax")
    with pytest.raises(ValueError, match=r"unknown kernel op"):
        kernels.available("softmax")
    with pytest.raises(ValueError, match=r"backend='cuda' is invalid: use one of 'torch', 'triton', 'auto'"):
        kernels.get("rmsnorm", backend="cuda")
    with pytest.raises(ValueError, match=r"register backend='cuda' is invalid"):
        kernels.register("rmsnorm", "cuda", lambda *a: None)


def test_a_missing_triton_kernel_is_named(monkeypatch):
    monkeypatch.setitem(registry._KERNELS, "rmsnorm", {"torch": rmsnorm_torch})  # as if none were registered
    with pytest.raises(BackendUnavailableError,
                       match=r"backend='triton' for rmsnorm: no Triton kernel is registered yet.*available here: torch"):
        kernels.get("rmsnorm", backend="triton")
    x = torch.randn(3, 8)
    with pytest.raises(BackendUnavailableError, match="no Triton kernel is registered yet"):
        kernels.rmsnorm(x, torch.ones(8), 1e-6, backend="triton")
    norm = RMSNorm(8, backend="triton")  # per module: checked where the inputs are known
    with pytest.raises(BackendUnavailableError, match="for rmsnorm"):
        norm(x)
    torch.testing.assert_close(norm(x, backend="torch"), RMSNorm(8)(x), rtol=0, atol=0)  # per call


def test_an_uninstalled_triton_is_named(toy_op, monkeypatch):
    monkeypatch.setattr(registry, "triton_installed", lambda: False)
    with pytest.raises(BackendUnavailableError, match=r"backend='triton' for toy: triton is not installed"):
        kernels.get(toy_op, "triton")
    assert kernels.available(toy_op) == ("torch",)
    assert kernels.get(toy_op)(1) == 2  # auto: the torch reference


def test_triton_without_cuda_or_the_interpreter_is_named(toy_op, monkeypatch):
    monkeypatch.setattr(registry, "triton_installed", lambda: True)
    with pytest.raises(BackendUnavailableError,
                       match=r"for toy: it needs a CUDA device or TRITON_INTERPRET=1 \(the inputs are on cpu\)"):
        kernels.get(toy_op, "triton", device="cpu")
    assert kernels.available(toy_op, "cpu") == ("torch",)
    assert kernels.get(toy_op, device=torch.device("cpu"))(1) == 2
    # CUDA inputs can run it, and so can CPU inputs under the interpreter
    assert kernels.available(toy_op, "cuda") == ("torch", "triton")
    assert kernels.get(toy_op, device="cuda")(1) == 3
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.available(toy_op, "cpu") == ("torch", "triton")
    assert kernels.resolve(toy_op, "auto", "cpu") == "triton"
    assert kernels.get(toy_op, "torch", "cpu")(1) == 2  # a named backend is never swapped


def test_without_a_device_triton_needs_a_visible_gpu(toy_op, monkeypatch):
    monkeypatch.setattr(registry, "triton_installed", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match=r"no CUDA device is visible"):
        kernels.get(toy_op, "triton")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert kernels.get(toy_op)(1) == 3


def test_set_backend_reaches_every_module_that_calls_a_kernel():
    cfg = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, moe_intermediate_size=8,
                      num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=2, kv_lora_rank=8,
                      q_lora_rank=None, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4, n_routed_experts=4,
                      num_experts_per_tok=2, n_group=1, topk_group=1, num_nextn_predict_layers=0)
    model = MiniDeepSeek(cfg)
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    moes = [m for m in model.modules() if isinstance(m, DeepSeekMoE)]
    assert norms and moes and all(m.backend == "auto" for m in norms + moes)
    kernels.set_backend(model, "torch", ops=["rmsnorm"])
    assert all(m.backend == "torch" for m in norms) and all(m.backend == "auto" for m in moes)
    assert kernels.set_backend(model, "torch") is model
    assert all(m.backend == "torch" for m in norms + moes)
    model(torch.randint(0, 32, (2, 5)))  # still runs
    with pytest.raises(ValueError, match="backend='fast'"):
        kernels.set_backend(model, "fast")
    with pytest.raises(ValueError, match="unknown kernel op 'norm'"):
        kernels.set_backend(model, "torch", ops=["norm"])


# ------------------------------------------------------------------- rmsnorm
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (3, 423, 213), (2, 5, 3, 64)])
@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES)
def test_rmsnorm_reference_matches_the_formula(shape, dtype, atol, rtol):
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    weight = torch.empty(shape[-1], dtype=torch.float64).uniform_(0.5, 1.5).to(dtype)
    eps = 1e-5
    x64 = x.double()
    expected = x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + eps) * weight.double()
    out = kernels.rmsnorm(x, weight, eps, backend="torch")
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


def test_rmsnorm_checks_the_weight_shape():
    with pytest.raises(ValueError, match=r"weight has shape \(7,\); expected \(8,\)"):
        kernels.rmsnorm(torch.randn(2, 8), torch.ones(7), 1e-6)


# ---------------------------------------------------------------- mla_decode
def mla_decode_by_rows(q, latent, lengths, scale, d_c):
    """softmax(q . latent^T * scale) @ latent[:, :d_c], one sequence at a time over its own rows, float64."""
    out = torch.zeros(*q.shape[:2], d_c, dtype=torch.float64)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            continue  # no keys: zeros
        rows = latent[b, :n].double()  # (n, D)
        p = torch.softmax(q[b].double() @ rows.T * scale, dim=-1)  # (n_h, n)
        out[b] = p @ rows[:, :d_c]
    return out


MLA_SHAPES = [  # (batch, heads, d_c, d_rope, S_max)
    (1, 1, 4, 2, 1),
    (3, 5, 16, 8, 37),
    (4, 3, 13, 3, 213),
    (2, 128, 512, 64, 9),  # V3's heads and latent
]


@pytest.mark.parametrize("B, n_h, d_c, d_rope, S", MLA_SHAPES)
@pytest.mark.parametrize("num_splits", [None, 1, 3, 64])
def test_mla_decode_reference_matches_the_formula_with_rows_of_different_lengths(B, n_h, d_c, d_rope, S,
                                                                                num_splits):
    torch.manual_seed(0)
    D = d_c + d_rope
    q = torch.randn(B, n_h, D)
    latent = torch.randn(B, S, D)
    lengths = torch.tensor([S - (b * 7) % S for b in range(B)])  # S, then shorter rows
    if B > 1:
        lengths[-1] = 1
    for b in range(B):
        latent[b, lengths[b]:] = float("nan")  # what a preallocated cache may hold past a length: never read
    scale = 1 / math.sqrt(D)
    out = kernels.mla_decode(q, latent, lengths, scale, d_c, backend="torch", num_splits=num_splits)
    assert out.shape == (B, n_h, d_c) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), mla_decode_by_rows(q, latent, lengths, scale, d_c),
                               atol=1e-5, rtol=1e-5)


def test_mla_decode_splits_agree_and_an_empty_sequence_gives_zeros():
    torch.manual_seed(1)
    q, latent = torch.randn(3, 4, 24), torch.randn(3, 50, 24) * 4  # large scores: the max subtraction matters
    lengths = torch.tensor([50, 0, 17])
    one = kernels.mla_decode(q, latent, lengths, 0.3, 16)
    assert torch.equal(one[1], torch.zeros(4, 16))
    for splits in (2, 7, 50, 1000):  # more splits than rows: one row each
        torch.testing.assert_close(kernels.mla_decode(q, latent, lengths, 0.3, 16, num_splits=splits), one,
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one.double(), mla_decode_by_rows(q, latent, lengths, 0.3, 16), atol=1e-5, rtol=1e-5)


def test_mla_decode_in_bf16_and_its_shape_checks():
    torch.manual_seed(2)
    q, latent = torch.randn(2, 3, 20), torch.randn(2, 11, 20)
    lengths = torch.tensor([11, 4])
    out = kernels.mla_decode(q.bfloat16(), latent.bfloat16(), lengths, 0.25, 16)
    assert out.dtype == torch.bfloat16
    expected = mla_decode_by_rows(q.bfloat16(), latent.bfloat16(), lengths, 0.25, 16)
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="share the batch and the last dimension"):
        kernels.mla_decode(q[..., :16], latent, lengths, 0.25, 16)
    with pytest.raises(ValueError, match="lengths must be integers of shape"):
        kernels.mla_decode(q, latent, lengths.float(), 0.25, 16)
    with pytest.raises(ValueError, match="kv_lora_rank=21"):
        kernels.mla_decode(q, latent, lengths, 0.25, 21)
    with pytest.raises(ValueError, match="num_splits=0"):
        kernels.mla_decode(q, latent, lengths, 0.25, 16, num_splits=0)


# --------------------------------------------------------------- moe_experts
def moe_by_tokens(x, weights, indices, gate_up_proj, down_proj):
    """sum_j w[t, j] * down(silu(gate x) * up x) for each token and each of its k choices, float64."""
    I = down_proj.shape[-1]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t].tolist(), indices[t].tolist(), strict=True):
            gate, up, down = gate_up_proj[e, :I].double(), gate_up_proj[e, I:].double(), down_proj[e].double()
            h = F.silu(gate @ x[t].double()) * (up @ x[t].double())  # (I,)
            out[t] += w * (down @ h)
    return out


MOE_SHAPES = [  # (tokens, hidden, width, experts, k)
    (1, 4, 6, 3, 1),
    (37, 13, 7, 5, 2),
    (64, 24, 10, 9, 4),
    (3, 423, 213, 4, 3),
]


def routing(T, E, k, generator):
    indices = torch.stack([torch.randperm(E, generator=generator)[:k] for _ in range(T)])  # distinct per token
    return torch.rand(T, k, generator=generator), indices


@pytest.mark.parametrize("T, H, I, E, k", MOE_SHAPES)
@pytest.mark.parametrize("dispatch", ["loop", "sorted"])
def test_moe_experts_reference_matches_the_formula(T, H, I, E, k, dispatch):
    g = torch.Generator().manual_seed(T * 1000 + E)
    x = torch.randn(T, H, generator=g)
    gate_up, down = torch.randn(E, 2 * I, H, generator=g) / H**0.5, torch.randn(E, H, I, generator=g) / I**0.5
    weights, indices = routing(T, E, k, g)
    out = kernels.moe_experts(x, weights, indices, gate_up, down, backend="torch", dispatch=dispatch)
    assert out.shape == (T, H) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), moe_by_tokens(x, weights, indices, gate_up, down), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype, atol, rtol", TOLERANCES[:2])
def test_moe_experts_strategies_agree_with_unused_experts_and_no_tokens(dtype, atol, rtol):
    g = torch.Generator().manual_seed(3)
    T, H, I, E, k = 19, 12, 6, 7, 2
    x = torch.randn(T, H, generator=g).to(dtype)
    gate_up, down = (torch.randn(E, 2 * I, H, generator=g) / 4).to(dtype), (torch.randn(E, H, I, generator=g) / 3).to(dtype)
    weights, indices = routing(T, E - 3, k, g)  # experts 4, 5, 6 get no tokens
    expected = moe_by_tokens(x, weights, indices, gate_up, down)
    for fn in (moe_experts_loop, moe_experts_sorted):
        out = fn(x, weights, indices, gate_up, down)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)
    empty = kernels.moe_experts(x[:0], weights[:0], indices[:0], gate_up, down)
    assert empty.shape == (0, H)


def test_moe_experts_checks_shapes_and_strategies():
    x, w, i = torch.randn(5, 8), torch.rand(5, 2), torch.randint(0, 4, (5, 2))
    gate_up, down = torch.randn(4, 6, 8), torch.randn(4, 8, 3)
    with pytest.raises(ValueError, match=r"shapes disagree.*down_proj \(4, 3, 8\)"):
        kernels.moe_experts(x, w, i, gate_up, down.transpose(1, 2))
    with pytest.raises(ValueError, match="dispatch='triton' is invalid.*backend='triton'"):
        kernels.moe_experts(x, w, i, gate_up, down, dispatch="triton")
    with pytest.raises(ValueError, match="dispatch='loop' is the torch reference"):
        kernels.moe_experts(x, w, i, gate_up, down, backend="triton", dispatch="loop")
