"""Expert parallelism on 2 processes against one process: time and the bytes the all-to-alls moved.

    python bench/ep.py                 (gloo on the CPU; nccl as well with 2 or more GPUs)
    python bench/ep.py --tokens 512    (tokens per rank)

Config: one DeepSeekMoE layer with 64 routed experts, top-6, 2 shared experts,
hidden 512, expert width 128, V3's sigmoid router with 8 groups (4 kept),
fp32 activations. Peers, on the same weights and the same 2 x T tokens:

- one process:   DeepSeekMoE over all 2 T tokens, forward + backward, with as
                 many torch threads as the two ranks have together (2), and
                 with 1 (on a busy machine two threads can lose to one);
- EP=2 (gloo):   ExpertParallelMoE, each of 2 processes (1 thread each) holds 32
                 experts and its T tokens; the wire in fp32 (exact), bf16, and
                 fp8 dispatch (1x128 scales, sent as uint8) with bf16 combine;
- EP=2 (nccl):   the same on 2 GPUs, only where 2 or more GPUs exist (one GPU
                 cannot hold two nccl ranks: the row is skipped and says so).

Times are medians of forward + backward after a warm-up, and "vs one" divides
by the faster single-process run; the bytes are what
rank 0 put into the dispatch and combine all-to-alls of one forward, against
:func:`mlakit.distributed.comm_volume`. On one CPU the all-to-all is a memory
copy through gloo's TCP transport on localhost: the table shows its cost, not
a network's. All processes are started by one spawn per backend.
"""

from __future__ import annotations

import argparse
import time

import torch
from benchutil import machine

from mlakit import ModelConfig
from mlakit.distributed import comm_volume, spawn
from mlakit.distributed.workers import ep_problem, ep_timing
from mlakit.kvcache import format_table

CFG = ModelConfig(hidden_size=512, moe_intermediate_size=128, n_routed_experts=64, n_shared_experts=2,
                  num_experts_per_tok=6, n_group=8, topk_group=4, routed_scaling_factor=2.5, norm_topk_prob=True,
                  scoring_func="sigmoid")
WIRES = {"fp32": (None, None), "bf16": ("bf16", "bf16"), "fp8 / bf16": ("fp8", "bf16")}
WORLD = 2


def single_process(tokens: int, repeats: int, threads: int) -> float:
    torch.set_num_threads(threads)
    moe, x, grad = ep_problem(CFG, 0, tokens)
    x.requires_grad_()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        moe(x).backward(grad)
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per rank (default 1024)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    T = args.tokens
    singles = {threads: single_process(WORLD * T, args.repeats, threads=threads) for threads in (WORLD, 1)}
    base = min(singles.values())  # the better of the two single-process runs is the baseline
    rows = [{"peer": f"one process, {WORLD * T} tokens ({threads} thread{'s' * (threads > 1)})",
             "ms": f"{seconds * 1e3:.1f}", "vs one": f"{seconds / base:.2f}x", "dispatch B": "-", "combine B": "-",
             "= theory": "-"} for threads, seconds in singles.items()]
    backends = [("gloo", "cpu")]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus >= WORLD:
        backends.append(("nccl", "cuda"))
    for backend, device in backends:
        jobs = [(ep_timing, (CFG, 0, T, args.repeats, *wire, device)) for wire in WIRES.values()]
        results = spawn(jobs, WORLD, backend=backend)
        for (name, (d, c)), per_rank in zip(WIRES.items(), results, strict=True):
            seconds = max(r["seconds"] for r in per_rank)
            comm = per_rank[0]["comm"]
            theory = comm_volume(CFG, T, WORLD, d or "fp32", c or "fp32")
            ok = (comm["dispatch_bytes"], comm["combine_bytes"]) == (theory.dispatch_bytes, theory.combine_bytes)
            rows.append({"peer": f"EP={WORLD} {backend}, wire {name}, {T} tokens/rank", "ms": f"{seconds * 1e3:.1f}",
                         "vs one": f"{seconds / base:.2f}x", "dispatch B": f"{comm['dispatch_bytes']:,}",
                         "combine B": f"{comm['combine_bytes']:,}", "= theory": "yes" if ok else "NO"})
    print(f"expert parallelism, {CFG.n_routed_experts} experts top-{CFG.num_experts_per_tok}, hidden "
          f"{CFG.hidden_size}; {machine()}\n")
    print(format_table(rows))
    if gpus < WORLD:
        print(f"\nnccl: skipped, it needs {WORLD} GPUs (one per rank) and this machine has {gpus}")
    remote = per_rank[0]["comm"]
    print(f"\nrank 0 sent {remote['remote_rows']:,} of its {remote['rows']:,} rows to the other rank "
          f"(balanced routing: {theory.remote_fraction:.0%}); once per destination rank it would send "
          f"{remote['dedup_remote_rows']:,}")


if __name__ == "__main__":
    main()
