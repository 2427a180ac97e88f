"""RMSNorm in Triton: a few whole rows per program, in registers, forward and backward.

The Triton backend of :func:`mlakit.kernels.rmsnorm`, imported on its first
call (importing this module imports triton and defines the kernels; to run
them on CPU tensors, ``TRITON_INTERPRET=1`` must be set before triton is first
imported).

Forward, row by row, exactly the reference's order of operations: the mean of
squares in float32, ``xhat = x * rstd`` cast back to x's dtype, times the
weight; it saves rstd (one float per row) for the backward. Backward of
y = w * xhat with xhat = x * rstd (the cast back is treated as the identity)::

    dxhat = dy * w
    dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    dw = sum over rows of dy * xhat

dx comes from a second kernel (the same rows per program); dw is one
reduction over the rows, left to torch. Both kernels read each row once and
write it once: RMSNorm is memory-bound, so that is all a kernel can win.

Under the interpreter, fp32 -> bf16 casts in a kernel truncate instead of
rounding to nearest even (see the tests): results may differ from the torch
reference by one ulp of the output dtype there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .registry import check_triton_launch, triton_interpret

MAX_WIDTH = 65536  # one row must fit in one program's registers


DEFINED_INTERPRETED = triton_interpret()  # triton.jit below reads TRITON_INTERPRET now, once


@triton.jit
def _rmsnorm_fwd(X, W, Y, RSTD, n_rows, stride_x, stride_y, n_cols, eps, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    cols = tl.arange(0, BLOCK)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols < n_cols)[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)  # (ROWS,)
    xhat = (x * rstd[:, None]).to(X.dtype.element_ty)  # cast back to x's dtype, as the reference does
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0)
    y = w.to(tl.float32)[None, :] * xhat.to(tl.float32)
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_mask)


@triton.jit
def _rmsnorm_bwd_dx(DY, X, W, RSTD, DX, n_rows, stride_dy, stride_x, stride_dx, n_cols,
                    ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols < n_cols)[None, :]
    dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
    xhat = x * rstd[:, None]
    dxhat = dy * w[None, :]
    dx = rstd[:, None] * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=1) / n_cols)[:, None])
    tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)


def _launch_options(n_rows: int, n_cols: int) -> tuple[int, int, int, int]:
    """(programs, ROWS, BLOCK, num_warps): the row padded to a power of two; on a GPU as many rows per
    program as make about 4096 elements (one row from 4096 wide on), more warps for wider rows. The
    interpreter pays per program, not per element: 64 rows per program there."""
    block = triton.next_power_of_2(n_cols)
    rows = 64 if triton_interpret() else max(1, min(64, 4096 // block))
    rows = min(rows, triton.next_power_of_2(max(n_rows, 1)))
    return triton.cdiv(n_rows, rows), rows, block, min(max(rows * block // 512, 1), 16)


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape, d = x.shape, x.shape[-1]
        x2 = x.reshape(-1, d)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        rows = x2.shape[0]
        y = torch.empty((rows, d), dtype=torch.result_type(x, weight), device=x.device)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        programs, per_program, block, warps = _launch_options(rows, d)
        if rows:
            _rmsnorm_fwd[(programs,)](x2, weight, y, rstd, rows, x2.stride(0), y.stride(0), d, eps,
                                      ROWS=per_program, BLOCK=block, num_warps=warps)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        d = x2.shape[-1]
        dy2 = dy.reshape(-1, d)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x2)
            rows = x2.shape[0]
            programs, per_program, block, warps = _launch_options(rows, d)
            if rows:
                _rmsnorm_bwd_dx[(programs,)](dy2, x2, weight, rstd, dx, rows, dy2.stride(0), x2.stride(0),
                                             dx.stride(0), d, ROWS=per_program, BLOCK=block, num_warps=warps)
            dx = dx.view(ctx.shape)
        if ctx.needs_input_grad[1]:
            xhat = (x2.float() * rstd[:, None]).to(x2.dtype)  # what multiplied the weight in the forward
            dw = (dy2.float() * xhat.float()).sum(0).to(weight.dtype)
        return dx, dw, None


def rmsnorm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x (..., d) with weight (d,) by the Triton kernels; differentiable in x and weight."""
    if x.shape[-1] > MAX_WIDTH:
        raise ValueError(f"rmsnorm (triton): the last dimension {x.shape[-1]} is over {MAX_WIDTH}, the widest row "
                         "one program holds; use backend='torch'")
    check_triton_launch("rmsnorm", DEFINED_INTERPRETED, x.device)
    return _RMSNormFunction.apply(x, weight.contiguous(), float(eps))


__all__ = ["rmsnorm_triton", "MAX_WIDTH"]
