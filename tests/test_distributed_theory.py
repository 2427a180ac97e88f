"""The theory side of mlakit.distributed, no processes started: bytes, V3's traffic per token, bubbles, fp8 packing."""

import math

import pytest
import torch

from mlakit.config import ModelConfig
from mlakit.distributed import (
    bubble,
    bubble_1f1b,
    bubble_dualpipe,
    bubble_fraction,
    bubble_zb1p,
    check_ep_size,
    comm_volume,
    expected_nodes_per_token,
    fp8_pack,
    fp8_unpack,
    idle_per_stage,
    row_bytes,
    shard_batch,
    simulate_1f1b,
    torchrun_command,
    v3_bytes_per_token,
)

V3 = ModelConfig.from_preset("deepseek-v3")


def test_row_bytes_by_hand():
    assert row_bytes(7168, "bf16") == 14336
    assert row_bytes(7168, "fp8") == 7168 + 4 * 56  # 56 tiles of 1x128, a float32 scale each
    assert row_bytes(200, "fp8") == 200 + 4 * 2  # a partial tile still has its scale
    assert row_bytes(64, "fp32") == 256
    with pytest.raises(ValueError, match="dtype='int4'"):
        row_bytes(64, "int4")


def test_comm_volume_by_hand():
    v = comm_volume(V3, 4096, 64, "fp8", "bf16")
    assert v.rows == 4096 * 8
    assert v.dispatch_bytes == 4096 * 8 * 7392 and v.combine_bytes == 4096 * 8 * 14336
    assert v.count_bytes == 256 * 8 and v.remote_fraction == pytest.approx(63 / 64)
    assert v.total_bytes == v.dispatch_bytes + v.combine_bytes + v.count_bytes
    with pytest.raises(ValueError, match="ep_size=3 .*n_routed_experts=256"):
        comm_volume(V3, 10, 3)
    with pytest.raises(ValueError, match="num_tokens=-1"):
        comm_volume(V3, -1, 8)


def test_v3_bytes_per_token_node_limited_and_not():
    limited = v3_bytes_per_token(V3)
    assert limited.nodes == 4
    assert limited.dispatch_bytes == 4 * 7392 and limited.combine_bytes == 4 * 14336
    assert limited.total_bytes == 86912
    assert limited.seconds(50) == pytest.approx(86912 / 50e9)
    # without the limit: 8 nodes minus the expected number of nodes none of the 8 experts landed on
    miss = math.prod((224 - i) / (256 - i) for i in range(8))
    free = v3_bytes_per_token(V3, node_limited=False)
    assert free.nodes == pytest.approx(8 * (1 - miss)) and 5.2 < free.nodes < 5.3
    assert free.total_bytes / limited.total_bytes == pytest.approx(free.nodes / 4)


def test_expected_nodes_edge_cases():
    assert expected_nodes_per_token(8, 1, 4) == pytest.approx(1.0)
    assert expected_nodes_per_token(8, 8, 4) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="nodes must divide"):
        expected_nodes_per_token(10, 2, 4)


def test_check_ep_size_names_both_numbers():
    assert check_ep_size(256, 64) == 4
    with pytest.raises(ValueError, match="3 processes.*n_routed_experts=8"):
        check_ep_size(8, 3)


def test_bubble_formulas_by_hand():
    assert bubble_1f1b(16, 1, 2) == 45
    assert bubble_zb1p(16, 1, 2, 1) == 15
    assert bubble_dualpipe(16, 2.5, 2, 1) == 7 * 1.5
    assert bubble("DualPipe", 16, 1, 2, 1) == bubble_dualpipe(16, 3, 2, 1)  # F&B defaults to F + B
    assert bubble_fraction(45, 30, 1, 2) == pytest.approx(45 / (45 + 90))
    with pytest.raises(ValueError, match="pp=5 is invalid: must be even"):
        bubble_dualpipe(5, 3, 2, 1)
    with pytest.raises(ValueError, match="schedule='GPipe'"):
        bubble("GPipe", 4, 1, 2)


@pytest.mark.parametrize("pp, m, F, B", [(4, 8, 1.0, 2.0), (4, 4, 1.0, 1.0), (8, 20, 0.5, 1.5), (3, 1, 1.0, 2.0)])
def test_simulated_1f1b_bubble_equals_the_formula(pp, m, F, B):
    ops = simulate_1f1b(pp, m, F, B)
    assert len(ops) == 2 * pp * m
    assert idle_per_stage(ops) == pytest.approx([bubble_1f1b(pp, F, B)] * pp)
    for op in ops:  # a backward never starts before its forward on the same stage
        if op.kind == "B":
            fwd = next(o for o in ops if o.stage == op.stage and o.kind == "F" and o.mb == op.mb)
            assert fwd.end <= op.start


def test_fp8_pack_round_trip_and_layout():
    torch.manual_seed(0)
    rows = torch.randn(5, 200) * torch.tensor([1.0, 100.0, 0.01, 0.0, 3.0])[:, None]
    packed = fp8_pack(rows)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 200 + 8)
    back = fp8_unpack(packed, 200, torch.float32)
    assert torch.equal(back[3], torch.zeros(200))  # an all-zero row stays zero
    rel = (back - rows).abs().amax(1) / rows.abs().amax(1).clamp_min(1e-30)
    assert (rel[[0, 1, 2, 4]] < 2 ** -4).all()  # e4m3 keeps 3 mantissa bits: relative error <= 1/16
    scales = packed[:, 200:].contiguous().view(torch.float32)  # (5, 2)
    torch.testing.assert_close(scales[1, 0], rows[1, :128].abs().max() / 448)


def test_shard_batch():
    batch = {"input_ids": torch.arange(12).view(6, 2), "targets": torch.arange(12).view(6, 2)}
    assert shard_batch(batch, 1, 3)["input_ids"].tolist() == [[4, 5], [6, 7]]
    with pytest.raises(ValueError, match="divisible by 4; the batch has 6 rows"):
        shard_batch(batch, 0, 4)


def test_torchrun_command():
    cmd = torchrun_command(2, ["train", "--steps", "5"])
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    assert cmd[-3:] == ["train", "--steps", "5"]


def test_torchrun_command_drops_the_nproc_option():
    assert torchrun_command(2, ["train", "--nproc", "2", "--out", "x"], drop="--nproc")[-3:] == ["train", "--out", "x"]
    assert torchrun_command(2, ["train", "--nproc=2"], drop="--nproc")[-1] == "train"


def test_nodes_per_token_by_hand():
    from mlakit.distributed import nodes_per_token

    idx = torch.tensor([[0, 1, 2], [0, 4, 8], [7, 3, 5]])  # nodes {0}, {0, 1, 2}, {1, 0, 1}
    assert nodes_per_token(idx, 4).tolist() == [1, 3, 2]


def test_v3_router_reaches_at_most_4_nodes_and_about_5_3_without_the_limit():
    """V3's router shape (256 experts in 8 groups, top-8, 4 groups kept) on random tokens: node-limited
    routing never reaches more than 4 of the 8 nodes; without the limit the average is near the theory."""
    from mlakit.distributed import nodes_per_token
    from mlakit.moe import Router

    torch.manual_seed(0)
    x = torch.randn(2000, 64)
    shape = dict(hidden_size=64, n_routed_experts=256, num_experts_per_tok=8, n_group=8)
    limited = nodes_per_token(Router(ModelConfig(**shape, topk_group=4))(x).indices, 32)
    free = nodes_per_token(Router(ModelConfig(**shape, topk_group=8))(x).indices, 32)  # all 8 groups kept
    assert limited.max() <= 4 and limited.float().mean() > 3.5
    assert abs(free.float().mean().item() - expected_nodes_per_token(256, 8, 8)) < 0.15


@pytest.mark.parametrize("pp, m", [(4, 8), (4, 4), (8, 16), (6, 9)])
def test_simulated_zb1p_bubble_equals_the_formula_at_equal_chunks(pp, m):
    from mlakit.distributed import simulate_zb1p

    ops = simulate_zb1p(pp, m, F=1.0, B=2.0, W=1.0)  # F = B - W = W
    assert len(ops) == 3 * pp * m
    assert idle_per_stage(ops) == pytest.approx([bubble_zb1p(pp, 1.0, 2.0, 1.0)] * pp)
    at = {(o.stage, o.kind, o.mb): o for o in ops}
    for o in ops:  # dependencies hold, and a stage never holds more micro-batches than 1F1B does
        if o.kind == "F" and o.stage > 0:
            assert at[(o.stage - 1, "F", o.mb)].end <= o.start
        if o.kind == "B":
            assert at[(o.stage, "F", o.mb)].end <= o.start
            if o.stage < pp - 1:
                assert at[(o.stage + 1, "B", o.mb)].end <= o.start
        if o.kind == "W":
            assert at[(o.stage, "B", o.mb)].end <= o.start
    for s in range(pp):
        started = sorted((o.start, o.kind) for o in ops if o.stage == s and o.kind in "FB")
        in_flight = 0
        for _, kind in started:
            in_flight += 1 if kind == "F" else -1
            assert in_flight <= pp - s
    with pytest.raises(ValueError, match="W=3"):
        simulate_zb1p(4, 4, 1.0, 2.0, 3.0)
