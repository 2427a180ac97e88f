"""Compile the library's Triton kernels for a Hopper GPU (sm_90) on a machine without one.

    python tests/compile_kernels.py      (run by tests/test_kernels_triton.py in a subprocess)

The interpreter runs a kernel's Python, not Triton's compiler: a kernel can pass every interpreter test
and still fail to compile (a shape the tensor cores refuse, a type the lowering rejects). Triton's
compiler needs no GPU for that: AST -> TTIR -> TTGIR -> LLVM -> PTX -> cubin with the ptxas it ships.
Each kernel is compiled with the block sizes and warps the library launches it with on a GPU, in bf16.
Must run without TRITON_INTERPRET (the kernels must be defined as compiled functions). Prints one line
per kernel; exits 1 if any fails.
"""
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mlakit.kernels import mla_decode_triton as M
from mlakit.kernels import moe_experts_triton as F
from mlakit.kernels import rmsnorm_triton as R

if os.environ.get("TRITON_INTERPRET", "") not in ("", "0"):
    sys.exit("tests/compile_kernels.py must run without TRITON_INTERPRET")
target = GPUTarget("cuda", 90, 32)
failed = []


def comp(fn, sig, consts, name, **opts):
    try:
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target, options=opts)
        print(f"OK   {name}: {len(k.asm['ptx']):,} bytes of PTX, {k.metadata.shared:,} bytes of shared memory")
    except Exception as e:  # noqa: BLE001 - report every kernel
        failed.append(name)
        print("FAIL", name, type(e).__name__, str(e)[:1500])


i32, f32 = "i32", "fp32"
sig = {"Q": "*bf16", "KV": "*bf16", "LENS": "*i32", "O": "*fp32", "LSE": "*fp32", "scale_log2": f32, "chunk": i32,
       **{k: i32 for k in ["stride_qb", "stride_qh", "stride_kb", "stride_kn", "stride_ob", "stride_oh", "stride_os",
                           "stride_lb", "stride_lh", "n_heads", "d_c", "d_rope"]},
       "BLOCK_H": "constexpr", "BLOCK_N": "constexpr", "BLOCK_C": "constexpr", "BLOCK_R": "constexpr", "UPCAST": "constexpr"}
comp(M._mla_decode_split, sig, {"BLOCK_H": 16, "BLOCK_N": 32, "BLOCK_C": 512, "BLOCK_R": 64, "UPCAST": False},
     "mla stage 1 bf16", num_warps=4, num_stages=2)
sig = {"O": "*fp32", "LSE": "*fp32", "OUT": "*bf16", **{k: i32 for k in ["n_heads", "n_splits", "d_c", "stride_ob",
       "stride_oh", "stride_os", "stride_lb", "stride_lh", "stride_outb", "stride_outh"]},
       "HEADS": "constexpr", "BLOCK_S": "constexpr", "BLOCK_C": "constexpr"}
comp(M._mla_decode_merge, sig, {"HEADS": 1, "BLOCK_S": 16, "BLOCK_C": 512}, "mla merge", num_warps=4)
sig = {"X": "*bf16", "W": "*bf16", "SORTED": "*i32", "BLOCK_EXPERT": "*i32", "ACT": "*bf16",
       **{k: i32 for k in ["n_slots", "top_k", "inter", "hidden", "stride_xt", "stride_we", "stride_wn", "stride_act"]},
       "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "UPCAST": "constexpr"}
comp(F._gate_up_silu, sig, {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "UPCAST": False}, "moe gate_up", num_warps=4, num_stages=3)
sig = {"ACT": "*bf16", "W": "*bf16", "SORTED": "*i32", "BLOCK_EXPERT": "*i32", "TOPK_W": "*fp32", "Y": "*bf16",
       **{k: i32 for k in ["n_slots", "inter", "hidden", "stride_act", "stride_we", "stride_wn", "stride_y"]},
       "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "UPCAST": "constexpr"}
comp(F._down_weighted, sig, {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "UPCAST": False}, "moe down", num_warps=4, num_stages=3)
sig = {"X": "*bf16", "W": "*bf16", "Y": "*bf16", "RSTD": "*fp32", "n_rows": i32, "stride_x": i32, "stride_y": i32,
       "n_cols": i32, "eps": f32, "ROWS": "constexpr", "BLOCK": "constexpr"}
comp(R._rmsnorm_fwd, sig, {"ROWS": 1, "BLOCK": 8192}, "rmsnorm fwd", num_warps=16)
sig = {"DY": "*bf16", "X": "*bf16", "W": "*bf16", "RSTD": "*fp32", "DX": "*bf16", "n_rows": i32, "stride_dy": i32,
       "stride_x": i32, "stride_dx": i32, "n_cols": i32, "ROWS": "constexpr", "BLOCK": "constexpr"}
comp(R._rmsnorm_bwd_dx, sig, {"ROWS": 8, "BLOCK": 512}, "rmsnorm bwd", num_warps=8)
sys.exit(1 if failed else 0)
