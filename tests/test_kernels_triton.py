"""The Triton kernels against their torch references and independent float64 formulas, over odd shapes.

On a CPU they run through Triton's interpreter (the ``triton_device`` fixture
sets ``TRITON_INTERPRET=1`` before the first kernel is defined), on a GPU for
real. Tolerances per dtype, and where they come from:

- float32: the interpreter's ``tl.dot`` is exact fp32, so 1e-5; on a GPU an
  fp32 ``tl.dot`` is TF32 (10-bit mantissa) by default: 2e-3 there.
- bfloat16: the kernels and the references round differently (and the
  interpreter's fp32 -> bf16 casts truncate instead of rounding to nearest
  even, one ulp = 2^-7 relative), so two ulps: 1.6e-2 relative.
- float16: 2e-3.

The interpreter computes ``tl.dot`` on bf16 operands wrongly (errors of
1e10); the kernels upcast them to fp32 when interpreting (``UPCAST``), which
the bf16 cases below check.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_kernels import mla_decode_by_rows, moe_by_tokens, routing

from mlakit import ModelConfig, kernels
from mlakit.kernels import BackendUnavailableError
from mlakit.layers import RMSNorm
from mlakit.mla import LatentCache, MultiHeadLatentAttention
from mlakit.model import MiniDeepSeek

pytestmark = pytest.mark.usefixtures("one_thread")


def tolerance(dtype, device):
    """(atol, rtol) for comparing a kernel's output with a float64 formula (see the module docstring)."""
    if dtype == torch.float32:
        return (1e-5, 1e-5) if device == "cpu" else (2e-3, 2e-3)
    return {torch.bfloat16: (1.6e-2, 1.6e-2), torch.float16: (2e-3, 2e-3)}[dtype]


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# ------------------------------------------------------------------- rmsnorm
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (3, 423, 213), (2, 65, 576)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_kernel_matches_the_formula(triton_device, shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    weight = torch.empty(shape[-1], dtype=torch.float64).uniform_(0.5, 1.5, generator=g).to(dtype)
    x64 = x.double()
    expected = x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + 1e-5) * weight.double()
    out = kernels.rmsnorm(x.to(triton_device), weight.to(triton_device), 1e-5, backend="triton")
    assert out.shape == x.shape and out.dtype == dtype
    atol, rtol = tolerance(dtype, triton_device)
    torch.testing.assert_close(out.cpu().double(), expected, atol=atol, rtol=rtol)
    reference = kernels.rmsnorm(x, weight, 1e-5, backend="torch")
    torch.testing.assert_close(out.cpu(), reference, atol=atol, rtol=rtol)


def test_rmsnorm_kernel_backward_matches_autograd_of_the_reference(triton_device):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 45, generator=g, dtype=torch.float64).float()
    weight = torch.empty(45).uniform_(0.5, 1.5, generator=g)
    upstream = torch.randn(3, 7, 45, generator=g)
    grads = {}
    for backend, device in (("torch", "cpu"), ("triton", triton_device)):
        xs, ws = x.to(device).requires_grad_(), weight.to(device).requires_grad_()
        y = kernels.rmsnorm(xs, ws, 1e-6, backend=backend)
        (y * upstream.to(device)).sum().backward()
        grads[backend] = (y.detach().cpu(), xs.grad.cpu(), ws.grad.cpu())
    atol, rtol = tolerance(torch.float32, triton_device)
    for ours, theirs in zip(grads["triton"], grads["torch"], strict=True):
        torch.testing.assert_close(ours, theirs, atol=atol, rtol=rtol)
    # the gradient is orthogonal to x in each row (RMSNorm is scale-invariant): x . dx = 0 up to rounding
    assert (grads["triton"][1] * x).sum(-1).abs().max() < 1e-4


def test_rmsnorm_layer_runs_the_kernel_under_auto(triton_device):
    norm = RMSNorm(24).to(triton_device)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 24, device=triton_device)
    assert kernels.resolve("rmsnorm", "auto", x.device) == "triton"
    torch.testing.assert_close(norm(x), norm(x, backend="torch"), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- mla_decode
def _mla_inputs(B, n_h, d_c, d_rope, S, lengths, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, n_h, d_c + d_rope, generator=g).to(dtype)
    latent = torch.randn(B, S, d_c + d_rope, generator=g).to(dtype)
    lengths = torch.tensor(lengths)
    for b in range(B):
        latent[b, lengths[b]:] = float("nan")  # past a length a preallocated cache may hold anything
    return q, latent, lengths


MLA_CASES = [  # (B, n_h, d_c, d_rope, S, lengths): the interpreter's BLOCK_N is 64, a GPU's 32
    (1, 1, 4, 2, 1, [1]),
    (3, 5, 16, 8, 70, [70, 1, 65]),  # one row; block + 1 (interpreter)
    (4, 3, 13, 3, 213, [213, 0, 33, 100]),  # an empty sequence; block + 1 (GPU); d_c and d_rope not powers of 2
    (2, 20, 40, 24, 129, [129, 64]),  # heads over one block of 16; exactly one block
]


@pytest.mark.parametrize("B, n_h, d_c, d_rope, S, lengths", MLA_CASES)
@pytest.mark.parametrize("num_splits", [None, 1, 3, 1000])
def test_mla_decode_kernel_matches_the_formula(triton_device, B, n_h, d_c, d_rope, S, lengths, num_splits):
    q, latent, lengths = _mla_inputs(B, n_h, d_c, d_rope, S, lengths, torch.float32)
    scale = 1 / math.sqrt(d_c + d_rope)
    out = kernels.mla_decode(q.to(triton_device), latent.to(triton_device), lengths.to(triton_device), scale, d_c,
                             backend="triton", num_splits=num_splits)
    assert out.shape == (B, n_h, d_c) and out.dtype == torch.float32
    assert torch.isfinite(out).all()  # the NaN rows past each length were never read
    atol, rtol = tolerance(torch.float32, triton_device)
    torch.testing.assert_close(out.cpu().double(), mla_decode_by_rows(q, latent, lengths, scale, d_c),
                               atol=atol, rtol=rtol)
    if 0 in lengths.tolist():
        assert torch.equal(out[lengths == 0].cpu(), torch.zeros(int((lengths == 0).sum()), n_h, d_c))


@pytest.mark.parametrize("dtype, n_h, d_c, d_rope, S, lengths", [
    (torch.bfloat16, 128, 512, 64, 40, [40, 9]),  # V3's 128 heads and 512 + 64 latent
    (torch.float16, 20, 40, 24, 70, [70, 3]),
])
def test_mla_decode_kernel_in_half_precision(triton_device, dtype, n_h, d_c, d_rope, S, lengths):
    q, latent, lengths = _mla_inputs(2, n_h, d_c, d_rope, S, lengths, dtype, seed=3)
    scale = 1 / math.sqrt(192)  # V3's q/k head dim, 128 + 64
    out = kernels.mla_decode(q.to(triton_device), latent.to(triton_device), lengths.to(triton_device), scale, d_c,
                             backend="triton", num_splits=2)
    assert out.dtype == dtype
    atol, rtol = tolerance(dtype, triton_device)
    torch.testing.assert_close(out.cpu().double(), mla_decode_by_rows(q, latent, lengths, scale, d_c),
                               atol=atol, rtol=rtol)


def test_mla_decode_splits_merge_to_one_softmax_with_large_scores(triton_device):
    """Scores of order 100: without the max subtraction exp overflows, without the LSE rescaling the splits
    would be weighted wrongly; every split count gives the one softmax."""
    q, latent, lengths = _mla_inputs(2, 4, 16, 8, 200, [200, 131], torch.float32, seed=4)
    q = q * 10
    one = kernels.mla_decode(q.to(triton_device), latent.to(triton_device), lengths.to(triton_device), 0.5, 16,
                             backend="triton", num_splits=1).cpu()
    atol, rtol = tolerance(torch.float32, triton_device)
    torch.testing.assert_close(one.double(), mla_decode_by_rows(q, latent, lengths, 0.5, 16), atol=atol, rtol=rtol)
    for splits in (2, 4):
        out = kernels.mla_decode(q.to(triton_device), latent.to(triton_device), lengths.to(triton_device), 0.5, 16,
                                 backend="triton", num_splits=splits).cpu()
        torch.testing.assert_close(out, one, atol=atol, rtol=rtol)


def test_mla_decode_kernel_is_forward_only_and_auto_knows_it(triton_device):
    q, latent, lengths = _mla_inputs(1, 2, 8, 8, 5, [5], torch.float32)
    q = q.to(triton_device).requires_grad_()
    latent, lengths = latent.to(triton_device), lengths.to(triton_device)
    with pytest.raises(RuntimeError, match=r"forward-only.*torch.no_grad\(\)"):
        kernels.mla_decode(q, latent, lengths, 0.3, 8, backend="triton")
    out = kernels.mla_decode(q, latent, lengths, 0.3, 8)  # auto: the torch reference, differentiable
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with torch.no_grad():
        torch.testing.assert_close(kernels.mla_decode(q, latent, lengths, 0.3, 8), out.detach(), atol=1e-5,
                                   rtol=1e-5)


def _nano(**overrides):
    return ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                       num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=4, kv_lora_rank=24,
                       q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=6,
                       num_experts_per_tok=2, n_group=1, topk_group=1, num_nextn_predict_layers=0,
                       max_position_embeddings=64, **overrides)


def test_mla_layer_decodes_through_the_kernel_under_auto(triton_device, monkeypatch):
    torch.manual_seed(0)
    cfg = _nano()
    layer = MultiHeadLatentAttention(cfg).eval().to(triton_device)
    calls = []
    original = kernels.mla_decode
    monkeypatch.setattr(kernels, "mla_decode", lambda *a, **k: calls.append(k["backend"]) or original(*a, **k))
    x = torch.randn(2, 7, cfg.hidden_size, device=triton_device)
    outs = {}
    with torch.no_grad():
        for backend in ("torch", "auto"):
            cache = LatentCache.for_config(cfg.replace(num_hidden_layers=1), 2, 8, device=triton_device)
            layer.backend = backend
            steps = [layer(x[:, :4], cache)]  # prefill: naive, no kernel
            steps += [layer(x[:, t:t + 1], cache) for t in range(4, 7)]  # three decode steps
            outs[backend] = torch.cat(steps, 1)
    assert calls == ["triton"] * 3  # the decode steps of the "auto" pass, none of the torch pass
    atol, rtol = tolerance(torch.float32, triton_device)
    torch.testing.assert_close(outs["auto"], outs["torch"], atol=atol, rtol=rtol)


def test_a_whole_model_with_every_kernel_matches_the_torch_model(triton_device):
    """RMSNorm, MLA decode and fused MoE kernels in one model: the same logits and the same greedy tokens."""
    torch.manual_seed(1)
    cfg = _nano()
    model = MiniDeepSeek(cfg).eval().to(triton_device)
    ids = torch.randint(0, cfg.vocab_size, (2, 5), device=triton_device)
    results = {}
    with torch.no_grad():
        for backend in ("torch", "triton"):
            kernels.set_backend(model, backend)
            cache = LatentCache.for_config(cfg, 2, 8, device=triton_device)
            prefill = model(ids, cache=cache).logits
            logits, tokens = [prefill[:, -1]], [prefill[:, -1].argmax(-1)]
            for _ in range(2):
                step = model(tokens[-1][:, None], cache=cache).logits[:, -1]
                logits.append(step)
                tokens.append(step.argmax(-1))
            results[backend] = torch.stack(logits, 1), torch.stack(tokens, 1)
    atol = 1e-4 if triton_device == "cpu" else 2e-2  # TF32 products on a GPU
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=atol, rtol=atol)
    if triton_device == "cpu":  # exact fp32 products: no near-tie can flip a greedy token
        assert torch.equal(results["triton"][1], results["torch"][1])


# --------------------------------------------------------------- fused MoE
def test_align_block_size_on_a_hand_worked_routing(triton_device):
    from mlakit.kernels.moe_experts_triton import align_block_size

    ids = torch.tensor([[2, 0], [2, 3], [0, 2]])  # slots 0..5: experts 2, 0, 2, 3, 0, 2; expert 1 has none
    sorted_slots, block_expert = align_block_size(ids, 4, 2)
    pad = 6
    # expert 0: slots 1, 4 | expert 2: slots 0, 2, 5 (+1 pad) | expert 3: slot 3 (+1 pad) | worst case 6 + 4 = 10 -> 5 blocks
    assert sorted_slots.tolist() == [1, 4, 0, 2, 5, pad, 3, pad, pad, pad]
    assert block_expert.tolist() == [0, 2, 2, 3, -1]


MOE_CASES = [  # (tokens, hidden, width, experts, k, experts that get tokens)
    (1, 4, 6, 3, 1, 3),
    (37, 13, 7, 5, 2, 5),
    (40, 24, 70, 9, 4, 6),  # experts 6, 7, 8 get no tokens; 70 columns: one block of 64 plus 6
    (3, 423, 213, 4, 3, 4),
]


@pytest.mark.parametrize("T, H, I, E, k, used", MOE_CASES)
def test_fused_moe_kernel_matches_the_formula(triton_device, T, H, I, E, k, used):
    g = torch.Generator().manual_seed(T * 1000 + E)
    x = torch.randn(T, H, generator=g)
    gate_up, down = torch.randn(E, 2 * I, H, generator=g) / H**0.5, torch.randn(E, H, I, generator=g) / I**0.5
    weights, indices = routing(T, used, k, g)
    args = [t.to(triton_device) for t in (x, gate_up, down, indices, weights)]
    out = kernels.fused_moe(*args, backend="triton")
    assert out.shape == (T, H) and out.dtype == torch.float32
    atol, rtol = tolerance(torch.float32, triton_device)
    expected = moe_by_tokens(x, weights, indices, gate_up, down)
    torch.testing.assert_close(out.cpu().double(), expected, atol=atol, rtol=10 * rtol)
    same_op = kernels.moe_experts(args[0], args[4], args[3], args[1], args[2], backend="triton")
    assert torch.equal(out, same_op)  # fused_moe is moe_experts with vLLM's argument order


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_moe_kernel_in_half_precision(triton_device, dtype):
    g = torch.Generator().manual_seed(7)
    T, H, I, E, k = 33, 64, 48, 8, 2
    x = torch.randn(T, H, generator=g).to(dtype)
    gate_up = (torch.randn(E, 2 * I, H, generator=g) / H**0.5).to(dtype)
    down = (torch.randn(E, H, I, generator=g) / I**0.5).to(dtype)
    weights, indices = routing(T, E, k, g)
    out = kernels.fused_moe(*(t.to(triton_device) for t in (x, gate_up, down, indices, weights)), backend="triton")
    assert out.dtype == dtype
    expected = moe_by_tokens(x, weights, indices, gate_up, down)  # float64 from the rounded inputs
    # the kernel also rounds silu(gate) * up and each expert's output to the dtype: 4 ulps of bf16, relative
    atol, rtol = tolerance(dtype, triton_device)
    torch.testing.assert_close(out.cpu().double(), expected, atol=2 * atol, rtol=2 * rtol)


def test_moe_layer_takes_the_kernel_for_inference_and_torch_for_training(triton_device):
    torch.manual_seed(2)
    from mlakit.moe import DeepSeekMoE

    cfg = _nano()
    moe = DeepSeekMoE(cfg).to(triton_device)
    x = torch.randn(2, 9, cfg.hidden_size, device=triton_device)
    with torch.no_grad():
        inference = moe(x)
        reference = moe(x, backend="torch")
    torch.testing.assert_close(inference, reference, atol=1e-5, rtol=1e-4)
    out = moe(x)  # autograd on: "auto" takes the torch backend
    out.sum().backward()
    assert moe.experts.gate_up_proj.grad is not None
    torch.testing.assert_close(out.detach(), reference, atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="forward-only"):
        moe(x, backend="triton")
    with torch.no_grad():
        assert kernels.fused_moe(x[0, :0], moe.experts.gate_up_proj, moe.experts.down_proj,
                                 torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2), backend="triton").shape == (0, 32)


def test_kernels_defined_for_the_gpu_refuse_cpu_tensors_with_a_clear_message():
    pytest.importorskip("triton")
    from mlakit.kernels import check_triton_launch

    with pytest.raises(BackendUnavailableError, match="defined before TRITON_INTERPRET=1 was set"):
        check_triton_launch("rmsnorm", False, torch.device("cpu"))
    with pytest.raises(BackendUnavailableError, match="defined with TRITON_INTERPRET=1"):
        check_triton_launch("rmsnorm", True, torch.device("cuda"))
    check_triton_launch("rmsnorm", True, torch.device("cpu"))  # the interpreter on CPU tensors: fine


def test_the_kernels_compile_for_a_hopper_gpu_without_one():
    """Triton's compiler (to PTX and a cubin for sm_90) on every kernel, in a process without the interpreter."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # triton 3.9 warns when unset
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, str(root / "tests" / "compile_kernels.py")], capture_output=True, text=True,
                         env=env, timeout=300)
    if "ptxas" in out.stderr and "not found" in out.stderr.lower():
        pytest.skip("this triton has no ptxas to compile with")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("OK ") == 6, out.stdout


def test_without_the_interpreter_or_a_gpu_auto_keeps_every_op_on_torch(monkeypatch):
    """The state of every test that does not ask for ``triton_device`` (tests/conftest.py takes the variable out
    of the environment): the kernels are registered, but "auto" runs the torch references on CPU tensors."""
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for op in ("rmsnorm", "mla_decode", "moe_experts"):
        assert "triton" in kernels.registry._KERNELS[op]
        assert kernels.resolve(op, "auto", "cpu") == "torch"
        with pytest.raises(BackendUnavailableError, match="needs a CUDA device or TRITON_INTERPRET=1"):
            kernels.get(op, "triton", "cpu")
