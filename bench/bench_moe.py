"""DeepSeekMoE dispatch on CPU: the loop reference against sorted dispatch, with transformers as a peer.

    python bench/bench_moe.py            (or: make bench)
    python bench/bench_moe.py --threads 1 --repeats 9   (steadier on a shared machine)

One MoE layer (hidden HIDDEN, expert width INTERMEDIATE, one shared expert,
V3 sigmoid gate with groups of GROUP_SIZE experts, half of the groups kept)
over T tokens, E experts, k per token. Every row times mlakit's ``loop`` and
``sorted`` dispatch and transformers' DeepseekV3MoE (eager experts) with
identical weights (checked equal before timing), forward under no_grad and
forward + backward. Each time is the best of REPEATS after a warm-up round,
with the three implementations taking turns; all numbers come from one run on
one machine, and the ratio columns are what to read.
"""

from __future__ import annotations

import argparse
import time

import torch

from mlakit import ModelConfig, seed_everything
from mlakit.moe import DeepSeekMoE

HIDDEN, INTERMEDIATE, GROUP_SIZE, REPEATS = 256, 128, 4, 5
SIZES = ((256, 8, 2), (1024, 16, 4), (4096, 16, 4), (4096, 64, 8))  # (tokens T, experts E, k)


def layers(tokens: int, experts: int, k: int):
    """Our layer and transformers' with the same weights, and a batch of tokens."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    n_group = experts // GROUP_SIZE
    cfg = ModelConfig(hidden_size=HIDDEN, moe_intermediate_size=INTERMEDIATE, n_routed_experts=experts,
                      n_shared_experts=1, num_experts_per_tok=k, n_group=n_group, topk_group=max(1, n_group // 2),
                      routed_scaling_factor=2.5, norm_topk_prob=True, scoring_func="sigmoid")
    seed_everything(0)
    ours = DeepSeekMoE(cfg)
    hf = DeepseekV3MoE(DeepseekV3Config(
        hidden_size=HIDDEN, moe_intermediate_size=INTERMEDIATE, n_routed_experts=experts, n_shared_experts=1,
        num_experts_per_tok=k, n_group=cfg.n_group, topk_group=cfg.topk_group, routed_scaling_factor=2.5,
        norm_topk_prob=True, hidden_act="silu", experts_implementation="eager"))
    hf.load_state_dict(ours.state_dict())  # same keys and shapes: transformers' in-memory layout
    x = torch.randn(tokens, HIDDEN)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, dispatch="sorted"), hf(x), atol=1e-4, rtol=1e-4)
    return ours, hf, x


def timings(ours, hf, x, repeats: int) -> dict[str, tuple[float, float]]:
    """Best (forward, forward + backward) seconds of each implementation.

    The implementations take turns inside every repeat, so a busy spell of the
    machine slows all of them rather than one; the first round is a warm-up.
    """
    runs = {"loop": lambda inp: ours(inp, dispatch="loop"), "sorted": lambda inp: ours(inp, dispatch="sorted"),
            "HF": hf}
    grad = torch.randn_like(x)
    x_train = x.clone().requires_grad_()
    times = {(name, step): [] for name in runs for step in (0, 1)}  # step 0: forward, 1: forward + backward
    for _ in range(repeats + 1):
        for name, fn in runs.items():
            start = time.perf_counter()
            with torch.no_grad():
                fn(x)
            times[name, 0].append(time.perf_counter() - start)
            start = time.perf_counter()
            fn(x_train).backward(grad)
            times[name, 1].append(time.perf_counter() - start)
            ours.zero_grad(set_to_none=True)
            hf.zero_grad(set_to_none=True)
    return {name: (min(times[name, 0][1:]), min(times[name, 1][1:])) for name in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per cell; the best is reported")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"DeepSeekMoE layer, hidden {HIDDEN}, expert width {INTERMEDIATE}, 1 shared expert, fp32, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats} (ms)\n")
    head = (f"{'T':>5}{'E':>4}{'k':>3} |{'fwd loop':>10}{'sorted':>8}{'HF':>8}{'loop/sorted':>13}{'HF/sorted':>11}"
            f" |{'f+b loop':>10}{'sorted':>8}{'HF':>8}{'loop/sorted':>13}{'HF/sorted':>11}")
    print(head)
    print("-" * len(head))
    for tokens, experts, k in SIZES:
        t = timings(*layers(tokens, experts, k), repeats=args.repeats)
        cells = []
        for i in (0, 1):  # forward, forward + backward
            loop, srt, hf = (t[name][i] * 1e3 for name in ("loop", "sorted", "HF"))
            cells.append(f"{loop:>10.1f}{srt:>8.1f}{hf:>8.1f}{loop / srt:>12.2f}x{hf / srt:>10.2f}x")
        print(f"{tokens:>5}{experts:>4}{k:>3} |{cells[0]} |{cells[1]}")


if __name__ == "__main__":
    main()
