"""The Triton kernels on a GPU: MLA decode bandwidth, fused MoE against its peers, RMSNorm bandwidth.

Named gpu_kernels.py, not kernels.py: run as a script, this folder comes first on sys.path, and a
kernels.py here would shadow the ``kernels`` package that transformers imports (bench/grpo.py breaks).

    python bench/gpu_kernels.py                   (needs a CUDA GPU for the tables)
    python bench/gpu_kernels.py --quick           (fewer shapes: batch 1, 32; contexts 1k, 8k)

On a machine without a CUDA device it says so, runs every kernel once through
Triton's interpreter on small shapes against its torch reference (correctness
only: interpreter timings mean nothing) and exits 0; nothing is written.

On a GPU, bf16 throughout, every time the median of ``triton.testing.do_bench``
(which clears the L2 cache between runs, so a small cache is not served from L2):

1. MLA decode (:func:`mlakit.kernels.mla_decode`), DeepSeek-V3's attention
   shapes: 128 query heads over a 576-wide latent cache (512 + 64), batch 1
   to 64, contexts 1k to 32k, every row full. Bytes moved = the latent rows
   read once (B x context x 576 x 2) + q + the output; achieved bandwidth =
   bytes / time, and its share of the GPU's peak (a table of datasheet numbers
   by device name; ``--peak-gbs`` for another card). Peers on the same inputs:
   the torch absorbed path that MLA runs (one shared KV head, q heads folded
   into rows: :func:`mlakit.attention.scaled_dot_product_attention`), eager and
   under ``torch.compile``. Target (issue): at least 70% of an H200's 4.8 TB/s
   at batch 32 and above with an 8k context.
2. Fused MoE (:func:`mlakit.kernels.fused_moe`): the Triton kernels against
   the loop and sorted torch strategies and a ``torch._grouped_mm`` version
   (align by sort, two grouped GEMMs, weighted scatter), at V3-like shapes
   (hidden 7168, width 2048, 256 experts, top-8) and lesson 07's
   ``nano`` shapes, for decode-sized and prefill-sized token counts.
   Target: at least 3x the loop.
3. RMSNorm: bandwidth of the kernel against torch eager and compiled, on
   V3's hidden rows (7168) and latent rows (512).

Outputs are compared with the torch reference before timing. The tables are
printed and written to ``bench/results/kernels-<device>.md`` and ``.json``
with the device, torch and Triton versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import sys
from functools import partial
from pathlib import Path

import torch

if not torch.cuda.is_available():  # before triton is imported: its own library must be defined for the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchutil import machine  # noqa: E402

from mlakit import kernels  # noqa: E402
from mlakit.attention import scaled_dot_product_attention  # noqa: E402
from mlakit.kernels.mla_decode import mla_decode_torch  # noqa: E402
from mlakit.kernels.moe_experts import moe_experts_loop, moe_experts_sorted  # noqa: E402
from mlakit.kvcache import format_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES, CONTEXTS = (1, 2, 4, 8, 16, 32, 64), (1024, 2048, 4096, 8192, 16384, 32768)
QUICK_BATCHES, QUICK_CONTEXTS = (1, 32), (1024, 8192)
N_HEADS, D_C, D_ROPE = 128, 512, 64  # DeepSeek-V3's absorbed decode: 128 heads over [c_KV ; k_R]
SCALE = 1 / math.sqrt(192)  # V3's 1/sqrt(d_nope + d_rope); its value does not change the cost
MLA_TARGET, MOE_TARGET = 0.70, 3.0
PEAK_GBS = {  # datasheet HBM bandwidth, GB/s, by a substring of torch.cuda.get_device_name()
    "H200": 4800, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "H800": 3350, "GH200": 4000,
    "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "L4": 300, "A10G": 600,
    "RTX 4090": 1008, "B200": 8000,
}
MOE_SHAPES = {  # name: (hidden, width, experts, top-k)
    "V3-like": (7168, 2048, 256, 8),
    "lesson (nano)": (256, 64, 16, 2),
}
MOE_TOKENS = (16, 512, 4096)


# ------------------------------------------------------------ timing, peaks
def peak_gbs(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_GBS.items():  # most specific first (dict order)
        if key in name:
            return float(value)
    return None


def bench_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def compiled(fn):
    """``torch.compile(fn)`` (automatic dynamic shapes: one recompile, not one per shape of the sweep), or None
    where compiling fails here (the table then says n/a)."""
    import torch._dynamo

    for limit in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 256)  # never fall back to eager silently in the sweep
    try:
        return torch.compile(fn)
    except Exception as exc:  # noqa: BLE001 - a benchmark reports what it cannot run
        print(f"  torch.compile unavailable: {exc}", file=sys.stderr)
        return None


def try_ms(fn) -> float | None:
    try:
        return bench_ms(fn)
    except Exception as exc:  # noqa: BLE001
        print(f"  skipped a peer: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", file=sys.stderr)
        return None


def absorbed_torch(q: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """What MLA's attend_absorbed runs for one token: q (B, n_h, 576) over the latent (B, S, 576) -> (B, n_h, 512)."""
    k = latent[:, None]  # (B, 1, S, 576): one KV head shared by every query head
    v = latent[:, None, :, :D_C]
    return scaled_dot_product_attention(q[:, :, None], k, v, SCALE, causal=True)[:, :, 0]


# ------------------------------------------------------------- MLA decode
def bench_mla(batches, contexts, peak: float | None) -> list[dict]:
    rows = []
    eager, comp = absorbed_torch, compiled(absorbed_torch)
    for ctx in contexts:
        for B in batches:
            gen = torch.Generator(device="cuda").manual_seed(B * 100003 + ctx)
            q = torch.randn(B, N_HEADS, D_C + D_ROPE, device="cuda", dtype=torch.bfloat16, generator=gen)
            latent = torch.randn(B, ctx, D_C + D_ROPE, device="cuda", dtype=torch.bfloat16, generator=gen)
            lengths = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
            with torch.no_grad():
                out = kernels.mla_decode(q, latent, lengths, SCALE, D_C, backend="triton")
                ref = mla_decode_torch(q, latent, lengths, SCALE, D_C)
                err = (out.float() - ref.float()).abs().max().item()
                if err > 3e-2:
                    raise AssertionError(f"MLA decode B={B} ctx={ctx}: kernel differs from the reference by {err:.3g}")
                kernel_ms = bench_ms(partial(kernels.mla_decode, q, latent, lengths, SCALE, D_C, backend="triton"))
                eager_ms = try_ms(partial(eager, q, latent))
                comp_ms = try_ms(partial(comp, q, latent)) if comp is not None else None
            nbytes = latent.numel() * 2 + q.numel() * 2 + B * N_HEADS * D_C * 2
            gbs = nbytes / kernel_ms / 1e6
            rows.append({
                "batch": B, "context": ctx, "cache MB": nbytes / 1e6, "triton ms": kernel_ms, "triton GB/s": gbs,
                "% of peak": 100 * gbs / peak if peak else None,
                "eager ms": eager_ms, "eager GB/s": nbytes / eager_ms / 1e6 if eager_ms else None,
                "compile ms": comp_ms, "compile GB/s": nbytes / comp_ms / 1e6 if comp_ms else None,
                "vs eager": eager_ms / kernel_ms if eager_ms else None,
                "vs compile": comp_ms / kernel_ms if comp_ms else None, "max |err|": err,
            })
    return rows


# --------------------------------------------------------------- fused MoE
def grouped_mm_moe(x, weights, indices, gate_up_proj, down_proj):
    """Sort the slots by expert, two ``torch._grouped_mm`` calls (gate/up, down), weight, scatter-add."""
    T, k = indices.shape
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    offs = torch.cumsum(torch.bincount(flat, minlength=gate_up_proj.shape[0]), 0).to(torch.int32)
    xs = x[order // k]  # (T*k, H)
    gate_up = torch._grouped_mm(xs, gate_up_proj.transpose(1, 2), offs=offs)  # (T*k, 2I)
    gate, up = gate_up.chunk(2, dim=-1)
    y = torch._grouped_mm(torch.nn.functional.silu(gate) * up, down_proj.transpose(1, 2), offs=offs)  # (T*k, H)
    y = y.float() * weights.reshape(-1)[order, None]
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    out.index_add_(0, order // k, y)
    return out.to(x.dtype)


def bench_moe(token_counts) -> list[dict]:
    rows = []
    for name, (H, I, E, k) in MOE_SHAPES.items():
        gen = torch.Generator(device="cuda").manual_seed(E)
        gate_up = torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16, generator=gen) / H**0.5
        down = torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16, generator=gen) / I**0.5
        for T in token_counts:
            x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16, generator=gen)
            scores = torch.rand(T, E, device="cuda", generator=gen)
            weights, indices = scores.topk(k, dim=-1)  # distinct experts per token, roughly balanced
            peers = {
                "triton": partial(kernels.fused_moe, x, gate_up, down, indices, weights, backend="triton"),
                "loop": partial(moe_experts_loop, x, weights, indices, gate_up, down),
                "sorted": partial(moe_experts_sorted, x, weights, indices, gate_up, down),
                "_grouped_mm": partial(grouped_mm_moe, x, weights, indices, gate_up, down),
            }
            with torch.no_grad():
                ref = moe_experts_loop(x, weights, indices, gate_up, down).float()
                scale = ref.abs().max().item()
                errs, times = {}, {}
                for peer, fn in peers.items():
                    try:
                        errs[peer] = (fn().float() - ref).abs().max().item() / scale
                    except Exception as exc:  # noqa: BLE001 - _grouped_mm needs a recent torch and SM90
                        print(f"  {peer} unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                              file=sys.stderr)
                        continue
                    if peer == "triton" and errs[peer] > 2e-2:
                        raise AssertionError(f"fused MoE {name} T={T}: relative error {errs[peer]:.3g}")
                    times[peer] = try_ms(fn)
            flops = 2 * T * k * 3 * H * I  # gate, up and down
            loop_ms = times.get("loop")
            row = {"shape": name, "tokens": T, "experts": E, "top-k": k}
            for peer in peers:
                row[f"{peer} ms"] = times.get(peer)
            row["triton TFLOP/s"] = flops / times["triton"] / 1e9 if times.get("triton") else None
            row["triton vs loop"] = loop_ms / times["triton"] if loop_ms and times.get("triton") else None
            row["triton vs sorted"] = times["sorted"] / times["triton"] if times.get("sorted") else None
            row["triton vs _grouped_mm"] = (times["_grouped_mm"] / times["triton"]
                                            if times.get("_grouped_mm") else None)
            row["max rel err"] = errs.get("triton")
            rows.append(row)
    return rows


# ------------------------------------------------------------------ RMSNorm
def bench_rmsnorm() -> list[dict]:
    rows = []
    comp = compiled(lambda x, w: kernels.rmsnorm(x, w, 1e-6, backend="torch"))
    for width, tokens in ((7168, 4096), (7168, 64), (512, 4096)):
        x = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)
        w = torch.rand(width, device="cuda", dtype=torch.bfloat16) + 0.5
        with torch.no_grad():
            err = (kernels.rmsnorm(x, w, 1e-6, backend="triton").float()
                   - kernels.rmsnorm(x, w, 1e-6, backend="torch").float()).abs().max().item()
            times = {"triton": bench_ms(partial(kernels.rmsnorm, x, w, 1e-6, backend="triton")),
                     "eager": try_ms(partial(kernels.rmsnorm, x, w, 1e-6, backend="torch")),
                     "compile": try_ms(partial(comp, x, w)) if comp is not None else None}
        nbytes = 2 * x.numel() * 2 + w.numel() * 2  # read x, write y
        row = {"rows": tokens, "width": width}
        for peer, ms in times.items():
            row[f"{peer} GB/s"] = nbytes / ms / 1e6 if ms else None
        row["max |err|"] = err
        rows.append(row)
    return rows


# --------------------------------------------------------------- CPU path
def check_on_cpu() -> None:
    """Each kernel once through the interpreter against its torch reference (small shapes)."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 48, generator=g), torch.rand(48, generator=g) + 0.5
    err = (kernels.rmsnorm(x, w, 1e-6, backend="triton") - kernels.rmsnorm(x, w, 1e-6, backend="torch")).abs().max()
    print(f"rmsnorm     max |kernel - torch| = {err:.2e}")
    q, latent = torch.randn(2, 16, 40, generator=g), torch.randn(2, 100, 40, generator=g)
    lengths = torch.tensor([100, 37])
    out = kernels.mla_decode(q, latent, lengths, 0.15, 32, backend="triton", num_splits=2)
    err = (out - kernels.mla_decode(q, latent, lengths, 0.15, 32, backend="torch")).abs().max()
    print(f"mla_decode  max |kernel - torch| = {err:.2e}  (2 sequences, 16 heads, 32 + 8 latent, 2 splits)")
    E, H, I, T, k = 6, 32, 24, 20, 2
    gate_up, down = torch.randn(E, 2 * I, H, generator=g) / H**0.5, torch.randn(E, H, I, generator=g) / I**0.5
    x = torch.randn(T, H, generator=g)
    weights, indices = torch.rand(T, E, generator=g).topk(k, dim=-1)
    out = kernels.fused_moe(x, gate_up, down, indices, weights, backend="triton")
    err = (out - moe_experts_loop(x, weights, indices, gate_up, down)).abs().max()
    print(f"fused_moe   max |kernel - loop|  = {err:.2e}  ({T} tokens, {E} experts, top-{k})")


# ------------------------------------------------------------------- output
def write_results(device_name: str, sections: dict[str, list[dict]], text: str) -> None:
    import triton

    RESULTS.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
    meta = {"device": device_name, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    (RESULTS / f"kernels-{slug}.json").write_text(json.dumps({"meta": meta, **sections}, indent=1) + "\n")
    (RESULTS / f"kernels-{slug}.md").write_text(
        f"# bench/gpu_kernels.py on {device_name}\n\n{json.dumps(meta)}\n\n```\n{text}```\n")
    print(f"\nwritten: {RESULTS / f'kernels-{slug}.md'} and .json")


def fmt(rows: list[dict]) -> str:
    return format_table([{k: ("n/a" if v is None else v) for k, v in r.items()} for r in rows], ".2f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 and 32, contexts 1k and 8k, fewer MoE sizes")
    parser.add_argument("--peak-gbs", type=float, default=None, help="the GPU's peak memory bandwidth, GB/s")
    parser.add_argument("--no-write", action="store_true", help="print only, write nothing under bench/results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu_kernels.py needs a CUDA GPU to time the kernels; none is visible here.\n"
              "Checking correctness only, through Triton's interpreter (TRITON_INTERPRET=1):")
        check_on_cpu()
        return
    name = torch.cuda.get_device_name()
    peak = peak_gbs(name, args.peak_gbs)
    head = f"{machine('cuda')}; triton {__import__('triton').__version__}; bf16; peak {peak or 'unknown'} GB/s"
    print(head)
    batches, contexts = (QUICK_BATCHES, QUICK_CONTEXTS) if args.quick else (BATCHES, CONTEXTS)
    mla = bench_mla(batches, contexts, peak)
    text = f"{head}\n\nMLA decode, {N_HEADS} heads over a {D_C}+{D_ROPE} latent cache (bytes: the cache read once)\n"
    text += fmt(mla) + "\n"
    target_rows = [r for r in mla if r["batch"] >= 32 and r["context"] == 8192]
    if target_rows and "H200" in name:
        worst = min(r["triton GB/s"] for r in target_rows)
        text += (f"target: at least {MLA_TARGET:.0%} of 4800 GB/s at batch >= 32, context 8k: worst {worst:.0f} GB/s "
                 f"({worst / 4800:.0%}): {'met' if worst >= MLA_TARGET * 4800 else 'NOT met'}\n")
    moe = bench_moe(MOE_TOKENS[:2] if args.quick else MOE_TOKENS)
    text += "\nFused MoE (bf16): Triton kernels against the loop, sorted and torch._grouped_mm versions\n"
    text += fmt(moe) + "\n"
    ratios = [r["triton vs loop"] for r in moe if r["triton vs loop"]]
    if ratios:
        text += (f"target: fused MoE at least {MOE_TARGET:.0f}x the loop: worst {min(ratios):.1f}x: "
                 f"{'met' if min(ratios) >= MOE_TARGET else 'NOT met'}\n")
    norm = bench_rmsnorm()
    text += "\nRMSNorm (bf16), bandwidth: read x, write y\n" + fmt(norm) + "\n"
    print(text[len(head):])
    if not args.no_write:
        write_results(name, {"mla_decode": mla, "fused_moe": moe, "rmsnorm": norm}, text)


if __name__ == "__main__":
    main()
