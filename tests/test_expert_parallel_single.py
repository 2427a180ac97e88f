"""ExpertParallelMoE in this process, as a group of one: no processes to start, so the edge cases are cheap."""

import pytest
import torch
import torch.distributed as dist

from mlakit.config import ModelConfig
from mlakit.distributed import ExpertParallelMoE, comm_volume, free_port
from mlakit.kernels import set_backend
from mlakit.moe import DeepSeekMoE

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = ModelConfig(hidden_size=32, moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
                  topk_group=1)


@pytest.fixture(scope="module")
def group_of_one():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_needs_an_initialised_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="torch.distributed initialised"):
        ExpertParallelMoE.from_moe(DeepSeekMoE(CFG))


def test_one_rank_equals_the_layer_and_keeps_its_interface(group_of_one):
    torch.manual_seed(0)
    moe = DeepSeekMoE(CFG)
    ep = ExpertParallelMoE.from_moe(moe)
    x = torch.randn(2, 5, 32, requires_grad=True)
    out, routing = ep(x, return_routing=True)
    want = moe(x)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    assert out.shape == x.shape and routing.counts.sum() == 10 * 2
    assert ep.last_comm.rows == 20 and ep.last_comm.remote_rows == 0
    assert ep.last_comm.dispatch_bytes == comm_volume(CFG, 10, 1, "fp32", "fp32").dispatch_bytes
    ep.update_bias(torch.tensor([10, 0, 5, 5]), 0.5)
    assert ep.gate.e_score_correction_bias.tolist() == [-0.5, 0.5, 0.0, 0.0]
    set_backend(ep, "torch")
    assert ep.backend == "torch"
    assert "experts=[0, 4) of 4" in repr(ep)


def test_no_tokens_and_bad_wire_formats(group_of_one):
    ep = ExpertParallelMoE.from_moe(DeepSeekMoE(CFG), dispatch_dtype="fp8", combine_dtype="bf16")
    out = ep(torch.zeros(0, 32))
    assert out.shape == (0, 32) and ep.last_comm.rows == 0
    with pytest.raises(ValueError, match="combine_dtype='fp8'"):
        ExpertParallelMoE.from_moe(DeepSeekMoE(CFG), combine_dtype="fp8")
