import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlakit import ModelConfig, kernels
from mlakit.kernels import registry
from mlakit.losses import balance_loss
from mlakit.moe import (
    DISPATCH_FUNCTIONS,
    DeepSeekMoE,
    GroupedSwiGLU,
    LoadTracker,
    RoutedExperts,
    Router,
    dispatch_loop,
    dispatch_sorted,
    expert_balance_loss,
    from_per_expert_state_dict,
    get_dispatch,
    max_violation,
    sequence_balance_loss,
    sort_by_expert,
    to_per_expert_state_dict,
)

try:  # the parity tests need transformers (a dev dependency); the rest run without it
    from hf_reference import hf_config
    from transformers import DeepseekV2Config
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
except ImportError:
    DeepseekV3MoE = None
needs_transformers = pytest.mark.skipif(DeepseekV3MoE is None, reason="transformers is not installed")

FP32 = dict(atol=1e-5, rtol=1e-5)


pytestmark = pytest.mark.usefixtures("one_thread")


def moe_config(**overrides) -> ModelConfig:
    """16 experts in 4 groups, 2 groups kept, 4 experts per token, V3-style gate."""
    base = dict(hidden_size=32, moe_intermediate_size=16, n_routed_experts=16, n_shared_experts=2,
                num_experts_per_tok=4, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                norm_topk_prob=True, scoring_func="sigmoid")
    return ModelConfig(**{**base, **overrides})


def make_moe(config: ModelConfig, seed: int = 0, bias_std: float = 0.1, **kwargs) -> DeepSeekMoE:
    torch.manual_seed(seed)
    moe = DeepSeekMoE(config, **kwargs)
    with torch.no_grad():
        moe.gate.e_score_correction_bias.normal_(0, bias_std)
    return moe


def hf_v3(ours: DeepSeekMoE) -> DeepseekV3MoE:
    """transformers' layer with our weights: the two state dicts share every key and shape."""
    ref = DeepseekV3MoE(hf_config(ours.config, experts_implementation="eager"))
    ref.load_state_dict(ours.state_dict())
    return ref


def sorted_by_expert(weights: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, order the k choices by expert id so choices compare as sets."""
    idx, perm = indices.sort(dim=-1)
    return weights.gather(1, perm), idx


# ------------------------------------------------------------ transformers parity
@needs_transformers
@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("dispatch", ["loop", "sorted"])
def test_moe_matches_transformers_deepseek_v3(norm_topk_prob, dispatch):
    ours = make_moe(moe_config(norm_topk_prob=norm_topk_prob))
    ref = hf_v3(ours)
    x = torch.randn(3, 20, 32)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = ours(x1, dispatch=dispatch), ref(x2)
    torch.testing.assert_close(out, expected, **FP32)

    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad, **FP32)
    torch.testing.assert_close(ours.gate.weight.grad, ref.gate.weight.grad, **FP32)
    torch.testing.assert_close(ours.experts.gate_up_proj.grad, ref.experts.gate_up_proj.grad, **FP32)
    torch.testing.assert_close(ours.experts.down_proj.grad, ref.experts.down_proj.grad, **FP32)


def test_the_bias_matters_in_the_parity_case():
    """The parity config is not vacuous: the bias and the group limit both change some choices."""
    moe = make_moe(moe_config())
    x = torch.randn(60, 32)
    chosen = moe.gate(x).indices.sort(-1).values
    no_bias = make_moe(moe_config(), bias_std=0.0)
    assert not torch.equal(chosen, no_bias.gate(x).indices.sort(-1).values)
    ungrouped = Router(moe_config(n_group=1, topk_group=1))
    ungrouped.load_state_dict(moe.gate.state_dict())
    assert not torch.equal(chosen, ungrouped(x).indices.sort(-1).values)


@needs_transformers
@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_router_matches_transformers_router(norm_topk_prob):
    ours = make_moe(moe_config(norm_topk_prob=norm_topk_prob), bias_std=0.2)
    ref = hf_v3(ours).gate
    x = torch.randn(50, 32)
    routing = ours.gate(x)
    logits, ref_weights, ref_indices = ref(x)
    w, idx = sorted_by_expert(routing.weights, routing.indices)
    ref_w, ref_idx = sorted_by_expert(ref_weights, ref_indices)
    torch.testing.assert_close(idx, ref_idx, rtol=0, atol=0)
    torch.testing.assert_close(w, ref_w, **FP32)
    torch.testing.assert_close(routing.scores, logits.sigmoid(), **FP32)
    assert routing.weights.dtype == routing.scores.dtype == torch.float32


@needs_transformers
def test_softmax_router_matches_transformers_deepseek_v2():
    """V2: softmax over all experts, group score = group max (group_limited_greedy), no renormalisation."""
    cfg = moe_config(scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=16.0)
    ours = make_moe(cfg, bias_std=0.0)
    assert ours.gate.group_score == "max"
    names = ("hidden_size", "moe_intermediate_size", "n_routed_experts", "n_shared_experts",
             "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob")
    ref = DeepseekV2Moe(DeepseekV2Config(**{name: getattr(cfg, name) for name in names},
                                         topk_method="group_limited_greedy", experts_implementation="eager"))
    state = ours.state_dict()
    del state["gate.e_score_correction_bias"]  # V2 has no balancing bias (ours is zero)
    ref.load_state_dict(state)
    x = torch.randn(2, 25, 32)
    routing = ours.gate(x)
    _, ref_weights, ref_indices = ref.gate(x)
    w, idx = sorted_by_expert(routing.weights, routing.indices)
    ref_w, ref_idx = sorted_by_expert(ref_weights, ref_indices)
    torch.testing.assert_close(idx, ref_idx, rtol=0, atol=0)
    torch.testing.assert_close(w, ref_w, **FP32)
    torch.testing.assert_close(ours(x), ref(x), **FP32)


@needs_transformers
def test_state_dict_is_transformers_in_memory_layout_and_converts_to_on_disk_names():
    cfg = moe_config(n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2)
    moe = make_moe(cfg)
    ref = DeepseekV3MoE(hf_config(cfg, experts_implementation="eager"))
    assert {k: v.shape for k, v in moe.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}

    per_expert = to_per_expert_state_dict(moe.state_dict())
    expected = {"gate.weight", "gate.e_score_correction_bias"}
    expected |= {f"shared_experts.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}
    expected |= {f"experts.{j}.{p}.weight" for j in range(8) for p in ("gate_proj", "up_proj", "down_proj")}
    assert set(per_expert) == expected
    assert per_expert["experts.3.gate_proj.weight"].shape == (16, 32)  # (I, H) like nn.Linear
    assert per_expert["experts.3.down_proj.weight"].shape == (32, 16)  # (H, I)
    assert per_expert["shared_experts.gate_proj.weight"].shape == (32, 32)  # I * n_shared_experts
    gate_up = moe.experts.gate_up_proj[5].detach()
    torch.testing.assert_close(per_expert["experts.5.gate_proj.weight"], gate_up[:16])  # gate rows first
    torch.testing.assert_close(per_expert["experts.5.up_proj.weight"], gate_up[16:])

    # the expert as a plain SwiGLU with the on-disk weights computes the same as the stacked expert
    from mlakit.layers import SwiGLU
    from mlakit.moe import swiglu
    mlp = SwiGLU(32, 16)
    mlp.load_state_dict({p: per_expert[f"experts.5.{p}"] for p in mlp.state_dict()})
    x = torch.randn(5, 32)
    torch.testing.assert_close(mlp(x), swiglu(x, *moe.experts.per_expert()[5]), **FP32)

    # prefixes of a full model survive, and the round trip restores the stacked layout
    prefixed = {f"model.layers.1.mlp.{k}": v for k, v in per_expert.items()}
    restored = from_per_expert_state_dict(prefixed)
    assert restored["model.layers.1.mlp.experts.gate_up_proj"].shape == (8, 32, 32)
    fresh = make_moe(cfg, seed=1)
    fresh.load_state_dict(from_per_expert_state_dict(per_expert))
    torch.testing.assert_close(fresh(x), moe(x), rtol=0, atol=0)
    del per_expert["experts.2.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing experts\.2\.up_proj\.weight"):
        from_per_expert_state_dict(per_expert)


# ------------------------------------------------------------------ dispatch
@st.composite
def moe_configs(draw):
    per_group = draw(st.sampled_from([2, 3, 4]))
    n_group = draw(st.integers(1, 4))
    topk_group = draw(st.integers(1, n_group))
    k = draw(st.integers(1, min(6, topk_group * per_group)))
    return ModelConfig(
        hidden_size=draw(st.sampled_from([4, 8, 12])), moe_intermediate_size=draw(st.sampled_from([4, 6, 8])),
        n_routed_experts=per_group * n_group, n_group=n_group, topk_group=topk_group, num_experts_per_tok=k,
        n_shared_experts=draw(st.integers(0, 2)), scoring_func=draw(st.sampled_from(["sigmoid", "softmax"])),
        norm_topk_prob=draw(st.booleans()), routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
    )


@settings(max_examples=30, deadline=None)
@given(config=moe_configs(), tokens=st.integers(1, 33), seed=st.integers(0, 2**16))
def test_loop_and_sorted_dispatch_agree_in_outputs_and_gradients(config, tokens, seed):
    moe = make_moe(config, seed=seed)
    x = torch.randn(tokens, config.hidden_size)
    grad = torch.randn(tokens, config.hidden_size)
    results = {}
    for dispatch in ("loop", "sorted"):
        moe.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        out = moe(xi, dispatch=dispatch)
        out.backward(grad)
        results[dispatch] = [out.detach(), xi.grad] + [p.grad for p in moe.parameters()]
    for a, b in zip(results["loop"], results["sorted"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sorted_dispatch_is_deterministic():
    moe = make_moe(moe_config())
    x = torch.randn(2, 64, 32)
    runs = []
    for _ in range(2):
        moe.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        out = moe(xi, dispatch="sorted")
        out.square().sum().backward()
        runs.append([out.detach(), xi.grad] + [p.grad.clone() for p in moe.parameters()])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_grouped_swiglu_backward_passes_gradcheck():
    """The hand-written backward of the sorted path against finite differences (float64)."""
    torch.manual_seed(0)
    T, k, E, H, I = 5, 2, 4, 3, 2
    indices = torch.tensor([[0, 2], [2, 0], [0, 3], [3, 2], [0, 2]])  # expert 1 gets no tokens
    order, counts = sort_by_expert(indices, E)
    x = torch.randn(T, H, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(T, k, dtype=torch.float64, requires_grad=True)
    gate_up = torch.randn(E, 2 * I, H, dtype=torch.float64, requires_grad=True)
    down = torch.randn(E, H, I, dtype=torch.float64, requires_grad=True)

    def fn(*inputs):
        return GroupedSwiGLU.apply(*inputs, order, counts.tolist())

    assert torch.autograd.gradcheck(fn, (x, weights, gate_up, down))
    out = fn(x.detach(), weights, gate_up.detach(), down.detach())  # only the gate weights need a gradient
    (grad_w,) = torch.autograd.grad(out.sum(), weights)
    assert grad_w.shape == (T, k)


def test_inference_buffers_are_not_shared_with_training():
    """No-grad forwards reuse one workspace; a training forward must keep its own saved tensors."""
    moe = make_moe(moe_config())
    x, other = torch.randn(40, 32), torch.randn(70, 32)
    with torch.no_grad():
        expected = moe(x, dispatch="sorted")
    moe.zero_grad(set_to_none=True)
    out = moe(x.clone().requires_grad_(), dispatch="sorted")
    out.square().sum().backward()
    reference = [p.grad.clone() for p in moe.parameters()]
    moe.zero_grad(set_to_none=True)
    out = moe(x, dispatch="sorted")
    with torch.no_grad():
        moe(other, dispatch="sorted")  # overwrites the inference workspace between forward and backward
    out.square().sum().backward()
    assert torch.equal(out.detach(), expected)
    for g, ref in zip([p.grad for p in moe.parameters()], reference, strict=True):
        assert torch.equal(g, ref)


def test_sort_by_expert_groups_slots_stably():
    indices = torch.tensor([[2, 0], [0, 1], [2, 1]])  # slots 0..5 = (token, k) in row-major order
    order, counts = sort_by_expert(indices, num_experts=4)
    assert order.tolist() == [1, 2, 3, 5, 0, 4]  # expert 0: slots 1, 2; expert 1: 3, 5; expert 2: 0, 4
    assert counts.tolist() == [2, 2, 2, 0]


def test_bad_dispatch_and_backend_names_raise_clear_errors():
    cfg = moe_config()
    with pytest.raises(ValueError, match="dispatch='fast'.*loop, sorted"):
        DeepSeekMoE(cfg, dispatch="fast")
    with pytest.raises(ValueError, match="dispatch='triton'.*backend='triton'"):  # the old planned name
        DeepSeekMoE(cfg, dispatch="triton")
    with pytest.raises(ValueError, match="backend='cuda' is invalid"):
        DeepSeekMoE(cfg, backend="cuda")
    moe = DeepSeekMoE(cfg)
    with pytest.raises(ValueError, match="dispatch='Loop'"):
        moe(torch.randn(3, 32), dispatch="Loop")
    with pytest.raises(ValueError, match="dispatch='loop' is the torch reference"):
        moe(torch.randn(3, 32), dispatch="loop", backend="triton")
    if "triton" not in kernels.available("moe_experts", "cpu"):
        with pytest.raises(kernels.BackendUnavailableError, match="backend='triton' for moe_experts"):
            moe(torch.randn(3, 32), backend="triton")


def test_dispatch_goes_through_the_kernel_registry(monkeypatch):
    """The layer's routed experts are the registry's moe_experts op, per module and per call."""
    moe = make_moe(moe_config())
    x = torch.randn(10, 32)
    calls = []
    torch_kernel = kernels.get("moe_experts", "torch")

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dispatch"))
        return torch_kernel(*args, **kwargs)

    monkeypatch.setitem(registry._KERNELS["moe_experts"], "torch", spy)
    expected = moe(x)
    assert calls == ["sorted"]
    moe.dispatch = "loop"
    torch.testing.assert_close(moe(x), expected, **FP32)
    assert calls == ["sorted", "loop"]
    moe(x, dispatch="sorted", backend="torch")
    assert calls[-1] == "sorted"
    r = moe.gate(x)
    torch.testing.assert_close(dispatch_loop(moe.experts, x, r.weights, r.indices),
                               dispatch_sorted(moe.experts, x, r.weights, r.indices), **FP32)
    assert calls[-2:] == ["loop", "sorted"]
    assert set(DISPATCH_FUNCTIONS) == {"loop", "sorted"} and get_dispatch("loop") is dispatch_loop


def test_shapes_dtypes_and_shared_experts():
    moe = make_moe(moe_config())
    assert moe.shared_experts.gate_proj.weight.shape == (32, 32)  # moe_intermediate_size * n_shared_experts
    x = torch.randn(2, 7, 32)
    out, routing = moe(x, return_routing=True)
    assert out.shape == x.shape
    torch.testing.assert_close(moe(x), out)  # the plain call returns the output alone
    assert routing.weights.shape == routing.indices.shape == (14, 4)
    assert routing.scores.shape == (14, 16) and routing.counts.shape == (16,)
    assert routing.counts.sum() == 14 * 4
    assert not hasattr(moe, "last_routing")  # routing is returned, never kept on the layer
    # without shared experts the layer is the routed sum alone
    bare = make_moe(moe_config(n_shared_experts=0))
    assert bare.shared_experts is None
    routing = bare.gate(x)
    torch.testing.assert_close(bare(x), bare.experts(x.view(14, 32), routing.weights, routing.indices).view(x.shape))
    # bf16 tokens: routing still in float32, output in bf16
    out16, routing16 = moe.to(torch.bfloat16)(x.bfloat16(), return_routing=True)
    assert out16.dtype == torch.bfloat16
    assert routing16.weights.dtype == torch.float32


# ------------------------------------------------------------ initialisation
def test_experts_built_alone_equal_the_same_experts_of_the_full_layer():
    """Each expert has its own seed: a slice built on another process (expert parallelism) is the full layer's."""
    cfg = moe_config(n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2)
    torch.manual_seed(1)
    full = RoutedExperts(cfg, seed=1234)
    torch.manual_seed(2)  # the global generator plays no part once the seed is given
    part = RoutedExperts(cfg, first_expert=4, num_local_experts=4, seed=1234)
    assert part.gate_up_proj.shape == (4, 32, 32) and part.down_proj.shape == (4, 32, 16)
    assert torch.equal(part.gate_up_proj, full.gate_up_proj[4:8])
    assert torch.equal(part.down_proj, full.down_proj[4:8])
    middle = RoutedExperts(cfg, first_expert=2, num_local_experts=3, seed=1234)
    assert torch.equal(middle.gate_up_proj, full.gate_up_proj[2:5])
    assert "local=[2, 5)" in repr(middle) and "local" not in repr(full)
    # global expert ids in, the same outputs as the full layer for the slots routed to the slice
    x, weights = torch.randn(6, 32), torch.rand(6, 2)
    indices = torch.tensor([[4, 7], [5, 6], [7, 4], [6, 5], [4, 5], [7, 6]])
    for dispatch in ("loop", "sorted"):
        torch.testing.assert_close(part(x, weights, indices, dispatch), full(x, weights, indices, dispatch),
                                   rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"experts \[6, 9\) must lie in \[0, 8\)"):
        RoutedExperts(cfg, first_expert=6, num_local_experts=3)


def test_expert_initialisation_is_seeded_distinct_and_keeps_nn_linears_distribution():
    cfg = moe_config()
    torch.manual_seed(0)
    a = DeepSeekMoE(cfg)
    torch.manual_seed(0)
    b = DeepSeekMoE(cfg)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name  # torch.manual_seed still makes a layer reproducible
    assert a.experts.seed == b.experts.seed
    assert not torch.equal(DeepSeekMoE(cfg).experts.gate_up_proj, a.experts.gate_up_proj)  # a new base seed
    assert not torch.equal(RoutedExperts(cfg, seed=1).down_proj, RoutedExperts(cfg, seed=2).down_proj)
    experts = RoutedExperts(moe_config(hidden_size=64, moe_intermediate_size=48), seed=7)
    for w, fan_in in ((experts.gate_up_proj, 64), (experts.down_proj, 48)):
        bound = fan_in ** -0.5  # nn.Linear's default: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert w.abs().max() <= bound
        assert w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.02)  # the std of that uniform
        flat = w.flatten(1)
        assert all(not torch.equal(flat[i], flat[j]) for i in range(len(flat)) for j in range(i))  # experts differ
    assert not torch.equal(experts.gate_up_proj[0, :48], experts.gate_up_proj[0, 48:])  # gate and up rows too


def test_experts_on_the_meta_device_draw_nothing():
    with torch.device("meta"):
        moe = DeepSeekMoE(moe_config(n_routed_experts=256, n_group=8, topk_group=4, hidden_size=1024,
                                     moe_intermediate_size=512))
    assert moe.experts.gate_up_proj.is_meta and moe.experts.gate_up_proj.shape == (256, 1024, 1024)
    assert moe.gate.e_score_correction_bias.is_meta and moe.gate.e_score_correction_bias.dtype == torch.float32
    moe.to_empty(device="cpu")
    moe.experts.reset_parameters()  # after to_empty, as meta initialisation does
    assert torch.equal(moe.experts.gate_up_proj[3], RoutedExperts(moe.config, first_expert=3, num_local_experts=1,
                                                                 seed=moe.experts.seed).gate_up_proj[0])


# ------------------------------------------------------------------- router
def test_the_balancing_bias_stays_float32_in_a_bf16_model_and_keeps_small_updates():
    """model.to(torch.bfloat16) must not cast the bias: at 0.6, bf16's spacing (2^-8) swallows gamma = 1e-3."""
    cfg = moe_config(n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2)
    torch.manual_seed(0)
    moe = DeepSeekMoE(cfg)
    with torch.no_grad():
        moe.gate.e_score_correction_bias.fill_(0.6)
    moe = moe.to(torch.bfloat16)
    bias = moe.gate.e_score_correction_bias
    assert moe.experts.gate_up_proj.dtype == moe.gate.weight.dtype == torch.bfloat16
    assert bias.dtype == torch.float32
    assert torch.equal(bias, torch.full((8,), 0.6))  # not rounded through bf16 (0.6015625)
    counts = torch.tensor([10, 2, 6, 6, 9, 3, 6, 6])  # mean 6: four experts off the mean
    moe.update_bias(counts, gamma=1e-3)
    bias = moe.gate.e_score_correction_bias
    expected = torch.full((8,), 0.6) + 1e-3 * torch.sign(6.0 - counts.float())
    assert torch.equal(bias, expected)
    assert (bias != 0.6).sum() == 4
    for convert in (lambda m: m.half(), lambda m: m.to("cpu", torch.float64), lambda m: m.float()):
        assert convert(moe).gate.e_score_correction_bias.dtype == torch.float32
    assert torch.equal(moe.gate.e_score_correction_bias, expected)
    assert moe.state_dict()["gate.e_score_correction_bias"].dtype == torch.float32
    out, routing = moe.to(torch.bfloat16)(torch.randn(5, 32, dtype=torch.bfloat16), return_routing=True)
    assert out.dtype == torch.bfloat16 and routing.scores.dtype == routing.weights.dtype == torch.float32


def test_group_limited_routing_never_picks_an_expert_from_a_masked_group():
    cfg = moe_config(n_routed_experts=32, n_group=8, topk_group=3, num_experts_per_tok=6)
    router = make_moe(cfg, bias_std=0.3).gate
    x = torch.randn(200, 32)
    routing = router(x)
    biased = routing.scores + router.e_score_correction_bias  # (T, E)
    for t in range(x.shape[0]):
        groups = [sorted(biased[t, g * 4:(g + 1) * 4].tolist())[-2:] for g in range(8)]
        group_scores = [sum(top2) for top2 in groups]
        kept = set(sorted(range(8), key=group_scores.__getitem__)[-3:])
        assert {e // 4 for e in routing.indices[t].tolist()} <= kept


def test_bias_changes_selection_but_not_the_weight_formula():
    cfg = moe_config()
    router = make_moe(cfg, bias_std=0.0).gate
    x = torch.randn(40, 32)
    before = router(x)
    with torch.no_grad():
        router.e_score_correction_bias[13] = 10.0  # every token now picks expert 13
    after = router(x)
    assert (after.indices == 13).any(dim=-1).all()
    assert not torch.equal(before.indices, after.indices)
    torch.testing.assert_close(after.scores, before.scores)  # affinities are unbiased
    chosen = after.scores.gather(1, after.indices)
    torch.testing.assert_close(after.weights, 2.5 * chosen / chosen.sum(-1, keepdim=True))


def test_norm_topk_prob_sums_to_the_scaling_factor():
    routing = make_moe(moe_config(routed_scaling_factor=2.5)).gate(torch.randn(30, 32))
    torch.testing.assert_close(routing.weights.sum(-1), torch.full((30,), 2.5))


def test_without_norm_topk_prob_weights_are_scaled_affinities():
    router = make_moe(moe_config(norm_topk_prob=False, routed_scaling_factor=16.0)).gate
    routing = router(torch.randn(30, 32))
    torch.testing.assert_close(routing.weights, 16.0 * routing.scores.gather(1, routing.indices))


def test_softmax_and_sigmoid_scoring():
    x = torch.randn(10, 32)
    soft = make_moe(moe_config(scoring_func="softmax", norm_topk_prob=False)).gate
    sig = make_moe(moe_config(scoring_func="sigmoid")).gate
    sig.weight.data.copy_(soft.weight.data)
    logits = x @ soft.weight.T
    torch.testing.assert_close(soft(x).scores, logits.softmax(-1))
    torch.testing.assert_close(sig(x).scores, logits.sigmoid())
    torch.testing.assert_close(soft(x).scores.sum(-1), torch.ones(10))
    assert (soft.group_score, sig.group_score) == ("max", "top2_sum")
    with pytest.raises(ValueError, match="group_score='mean'"):
        Router(moe_config(), group_score="mean")


def test_gradient_reaches_the_router_only_through_the_gate_weights():
    moe = make_moe(moe_config())
    moe(torch.randn(8, 32)).sum().backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    assert moe.gate.e_score_correction_bias.grad is None  # a buffer: never trained by gradients


# ---------------------------------------------------------------- balancing
def test_update_bias_follows_the_sign_of_mean_minus_load():
    router = make_moe(moe_config(n_routed_experts=4, n_group=2, topk_group=1, num_experts_per_tok=2),
                      bias_std=0.0).gate
    counts = torch.tensor([10, 2, 6, 6])  # mean 6
    router.update_bias(counts, gamma=0.0)
    assert torch.equal(router.e_score_correction_bias, torch.zeros(4))
    router.update_bias(counts, gamma=0.01)
    torch.testing.assert_close(router.e_score_correction_bias, torch.tensor([-0.01, 0.01, 0.0, 0.0]))
    with pytest.raises(ValueError, match="gamma"):
        router.update_bias(counts, gamma=-1.0)


def test_update_bias_moves_towards_balance():
    router = make_moe(moe_config(n_group=1, topk_group=1), bias_std=0.0).gate
    with torch.no_grad():
        router.weight[:4] += 0.05  # experts 0-3 align with the tokens' common direction: routing collapse
    x = torch.randn(512, 32) + 1.0
    start = max_violation(router(x).counts).item()
    for _ in range(60):
        router.update_bias(router(x).counts, gamma=0.01)
    end = max_violation(router(x).counts).item()
    assert start > 2.0 and end < start / 5
    assert router.e_score_correction_bias[:4].max() < 0 < router.e_score_correction_bias[4:].max()


def test_max_violation_on_known_counts():
    assert max_violation(torch.tensor([10, 2, 6, 6])).item() == pytest.approx(4 / 6)
    assert max_violation(torch.tensor([5, 5, 5, 5])).item() == 0.0
    assert max_violation(torch.tensor([0, 0, 12, 0])).item() == pytest.approx(3.0)  # E - 1
    assert max_violation(torch.zeros(4)).item() == 0.0
    torch.testing.assert_close(max_violation(torch.tensor([[10, 2, 6, 6], [3, 3, 3, 3]])), torch.tensor([4 / 6, 0.0]))


def test_sequence_balance_loss_on_a_hand_computed_case():
    # one sequence of T=2 tokens, E=4 experts, k=2
    scores = torch.tensor([[1.0, 0.6, 0.2, 0.2],  # sum 2.0 -> normalised [0.5, 0.3, 0.1, 0.1]
                           [0.1, 0.1, 0.2, 0.1]])  # sum 0.5 -> normalised [0.2, 0.2, 0.4, 0.2]
    indices = torch.tensor([[0, 1], [2, 0]])
    # P = [0.35, 0.25, 0.25, 0.15]; counts [2, 1, 1, 0], f = counts * 4 / (2 * 2) = [2, 1, 1, 0]
    # sum f P = 0.7 + 0.25 + 0.25 = 1.2
    assert sequence_balance_loss(scores, indices, alpha=0.1).item() == pytest.approx(0.12)
    # V2's expert-level loss uses the raw affinities: P = [0.55, 0.35, 0.2, 0.15], sum f P = 1.65
    assert expert_balance_loss(scores, indices, alpha=0.1).item() == pytest.approx(0.165)
    # a second sequence with perfect balance (sum f P = 1) averages in
    scores2 = torch.cat([scores, torch.full((2, 4), 0.25)])
    indices2 = torch.cat([indices, torch.tensor([[0, 1], [2, 3]])])
    loss = sequence_balance_loss(scores2, indices2, alpha=0.1, seq_len=2)
    assert loss.item() == pytest.approx(0.1 * (1.2 + 1.0) / 2)
    batched = sequence_balance_loss(scores2.view(2, 2, 4), indices2.view(2, 2, 2), alpha=0.1)
    assert batched.item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="seq_len=3"):
        sequence_balance_loss(scores2, indices2, seq_len=3)


def test_balance_losses_agree_for_softmax_and_train_the_router():
    moe = make_moe(moe_config(scoring_func="softmax", norm_topk_prob=False), bias_std=0.0)
    _, r = moe(torch.randn(2, 12, 32), return_routing=True)
    seq = balance_loss([r], alpha=0.003, batch_size=2)
    torch.testing.assert_close(seq, expert_balance_loss(r.scores, r.indices, alpha=0.003, seq_len=12))
    seq.backward()
    assert moe.gate.weight.grad.abs().sum() > 0
    sig = make_moe(moe_config())
    _, r = sig(torch.randn(2, 12, 32), return_routing=True)
    assert sig.config.aux_loss_alpha == 1e-4
    seq = balance_loss([r], sig.config.aux_loss_alpha, batch_size=2)
    torch.testing.assert_close(seq, sequence_balance_loss(r.scores.view(2, 12, 16), r.indices.view(2, 12, 4), 1e-4))
    assert not torch.allclose(seq, expert_balance_loss(r.scores, r.indices, 1e-4, seq_len=12))


def test_load_tracker_records_steps_and_layers():
    cfg = moe_config()
    model = torch.nn.Sequential(make_moe(cfg), make_moe(cfg, seed=1), make_moe(cfg, seed=2))
    tracker = LoadTracker()
    for _ in range(5):
        x = torch.randn(2, 8, 32)
        tracker.record([moe(x, return_routing=True)[1].counts for moe in model])
    assert len(tracker) == 5
    assert tracker.history.shape == (5, 3, 16)
    torch.testing.assert_close(tracker.history.sum(-1), torch.full((5, 3), 16.0 * 4))
    assert tracker.max_violation().shape == (5, 3)
    with pytest.raises(ValueError, match="earlier steps"):
        tracker.record(torch.ones(2, 16))

