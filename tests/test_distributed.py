"""Data and expert parallelism on 2 gloo processes equal one process; the byte counts equal the theory.

One spawn for the whole module (starting processes that import torch costs 4-8 s):
the fixture runs every job in the same two processes and the tests compare
what came back with one process doing the whole work.
"""

import pytest
import torch

from mlakit.config import ModelConfig
from mlakit.distributed import comm_volume, spawn
from mlakit.distributed.workers import (
    RandomBatches,
    ep_error,
    ep_forward_backward,
    reference_moe,
    train_data_parallel,
)
from mlakit.model import MiniDeepSeek
from mlakit.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = 2
TOKENS = 24  # per rank
MOE = ModelConfig(hidden_size=64, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2,
                  n_group=2, topk_group=1)  # group-limited: a token's 2 experts lie on one rank
MOE_OPEN = ModelConfig(hidden_size=64, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=3,
                       n_group=1, topk_group=1, n_shared_experts=0)  # no group limit, no shared experts
# 16 experts and 12 tokens per rank and step: some experts get no token on a rank (DDP must cope)
MODEL = ModelConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=2,
                    q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                    moe_intermediate_size=16, n_routed_experts=16, n_group=2, topk_group=1,
                    max_position_embeddings=32)
TRAIN = TrainConfig(steps=3, lr=1e-2, warmup_steps=1, eval_every=0, seed=0)
BATCHES = RandomBatches(MODEL.vocab_size, batch_size=4, seq_len=6, seed=0)
WIRES = {"exact": (None, None), "bf16": ("bf16", "bf16"), "fp8": ("fp8", "bf16")}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ddp") / "ckpt"
    jobs = [(ep_forward_backward, (MOE, 0, TOKENS, *wire)) for wire in WIRES.values()]
    jobs += [(ep_forward_backward, (MOE_OPEN, 1, TOKENS)),
             (ep_error, (ModelConfig(n_routed_experts=3, n_group=1, topk_group=1),)),
             (train_data_parallel, (MODEL, TRAIN, BATCHES, str(ckpt)))]
    out = spawn(jobs, WORLD)
    return dict(zip([*WIRES, "open", "error", "ddp"], out, strict=True)) | {"ckpt": ckpt}


def _compare(ranks, config, seed, atol):
    ref = reference_moe(config, seed, TOKENS * WORLD)
    L = config.n_routed_experts // WORLD
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), ref["out"], atol=atol, rtol=0)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), ref["x_grad"], atol=atol, rtol=0)
    for rank, r in enumerate(ranks):
        e = r["first_expert"]
        assert e == rank * L
        for name in ("experts.gate_up_proj", "experts.down_proj"):  # the local experts saw every rank's tokens
            torch.testing.assert_close(r["grads"][name], ref["grads"][name][e:e + L], atol=atol * 10, rtol=atol)
    for name, g in ref["grads"].items():  # replicated parts: each rank holds its tokens' share
        if not name.startswith("experts."):
            torch.testing.assert_close(sum(r["grads"][name] for r in ranks), g, atol=atol * 10, rtol=atol)


@pytest.mark.parametrize("case, config, seed", [("exact", MOE, 0), ("open", MOE_OPEN, 1)])
def test_expert_parallel_equals_one_process(results, case, config, seed):
    _compare(results[case], config, seed, atol=1e-5)


def test_bf16_wire_is_close_and_fp8_dispatch_is_close(results):
    ref = reference_moe(MOE, 0, TOKENS * WORLD)["out"]
    scale = ref.abs().max()
    err = {w: ((torch.cat([r["out"] for r in results[w]]) - ref).abs().max() / scale).item() for w in ("bf16", "fp8")}
    assert 0 < err["bf16"] < 0.02 and 0 < err["fp8"] < 0.1, err  # bf16: 8 bits of mantissa; e4m3: 4
    assert err["fp8"] > err["bf16"]


@pytest.mark.parametrize("wire", list(WIRES))
def test_measured_bytes_equal_comm_volume(results, wire):
    dispatch, combine = WIRES[wire]
    theory = comm_volume(MOE, TOKENS, WORLD, dispatch or "fp32", combine or "fp32")
    for r in results[wire]:
        c = r["comm"]
        assert (c["rows"], c["dispatch_bytes"], c["combine_bytes"], c["count_bytes"]) == (
            theory.rows, theory.dispatch_bytes, theory.combine_bytes, theory.count_bytes)
    # by hand: 24 tokens x 2 slots = 48 rows of 64 values; fp8 adds one float32 scale per row (64 < 128)
    assert theory.rows == 48
    assert {"exact": 48 * 64 * 4, "bf16": 48 * 64 * 2, "fp8": 48 * (64 + 4)}[wire] == theory.dispatch_bytes
    assert theory.count_bytes == 8 * 8


def test_group_limited_routing_sends_each_token_to_one_rank(results):
    """n_group 2 = the 2 ranks, topk_group 1: both experts of a token on one rank, so the remote rows of a
    token that leaves go to a single rank, and sending the token once per rank halves them; without the
    limit (3 experts of 8 anywhere) a token often reaches both ranks."""
    for r in results["exact"]:
        c = r["comm"]
        assert c["remote_rows"] == 2 * c["dedup_remote_rows"]
        assert c["remote_dispatch_bytes"] == c["remote_rows"] * 64 * 4
    open_ = [r["comm"] for r in results["open"]]
    assert all(c["dedup_remote_rows"] > c["remote_rows"] / 3 for c in open_)


def test_world_size_that_does_not_divide_the_experts_is_a_clear_error(results):
    for message in results["error"]:
        assert "2 processes" in message and "n_routed_experts=3" in message


def test_data_parallel_equals_one_process_on_the_full_batch(results):
    torch.manual_seed(TRAIN.seed)
    model = MiniDeepSeek(MODEL)
    single = Trainer(model, TRAIN, BATCHES)
    single.train()
    for rank in results["ddp"]:
        for name, t in model.state_dict().items():
            torch.testing.assert_close(rank["state"][name], t, atol=1e-5, rtol=1e-5, msg=name)
        for mine, theirs in zip(rank["history"], single.history, strict=True):
            assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
            assert mine["expert_load"] == theirs["expert_load"]  # global loads: the bias moved alike
    moved = sum(t.abs().sum() for n, t in model.state_dict().items() if n.endswith("e_score_correction_bias"))
    assert moved > 0
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}  # the last step's, clipped
    for rank in results["ddp"]:
        assert rank["grads"].keys() == grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(rank["grads"][name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_some_expert_got_no_token_on_a_rank_and_training_went_on(results):
    """At 12 tokens per rank, top-2 of 16 experts in one of 2 groups, a rank leaves experts idle (checked on
    the shards' routing of step 0): their slice of the stacked gradient is zero there, and the run above still
    equals one process."""
    model = MiniDeepSeek(MODEL)
    model.load_state_dict(results["ddp"][0]["state"])
    batch = BATCHES(0)
    idle = 0
    with torch.no_grad():
        for rank in range(WORLD):
            out = model(batch["input_ids"][rank * 2:(rank + 1) * 2], output_routing=True)
            idle += sum(int((r.counts == 0).sum()) for r in out.routing)
    assert idle > 0
    assert len(results["ddp"][0]["history"]) == TRAIN.steps


def test_checkpoint_written_once_by_rank_zero(results):
    files = sorted(p.name for p in results["ckpt"].iterdir())
    assert "model.safetensors" in files and "trainer.json" in files
    loaded = MiniDeepSeek.from_pretrained(results["ckpt"])
    torch.testing.assert_close(loaded.state_dict()["embed_tokens.weight"],
                               results["ddp"][1]["state"]["embed_tokens.weight"])
