"""RMSNorm with an optional fused residual add, InternLM2 numerics.

    r = x + residual            (in the activation dtype, as the reference adds)
    y = weight * cast(r * rsqrt(mean(r^2) + eps))   statistics in fp32, cast back, THEN the weight

x, residual: (T, C) with a contiguous last dim (rows may be strided); weight: (C,). Returns (y, r); without a
residual r is x itself in the reference and a fresh copy of x in the kernel (a custom op may not alias an input).
y has dtype promote(weight, x).

Kernel: one program per row (or ROWS rows for narrow C), the whole row in registers for C <= 8192 (one read of x and
residual, one write of y and r: the bandwidth floor); wider rows take two passes over BLOCK_C chunks, re-reading r
from the output they just wrote. Rounding follows the reference exactly: the add, the cast of the normalised row to
x's dtype and the weight product are each done in fp32 and rounded once to their dtype, which equals the
half-precision op (fp32 holds a half*half product exactly and has >= 2p+2 bits, so the double rounding of a sum is
harmless); only the fp32 mean of squares may differ in its last bits (another summation order).
"""

import torch

from ._checks import FLOATS
from ._triton import tl, triton


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    if residual is not None:
        x = x + residual
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * y.to(x.dtype), x


@triton.jit
def _add_residual(x_ptrs, res_ptrs, r_out_ptrs, mask, HAS_RESIDUAL: tl.constexpr):
    """r = x (+ residual) rounded to x's dtype, written to the residual output; returned in fp32."""
    x = tl.load(x_ptrs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(res_ptrs, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
    tl.store(r_out_ptrs, x, mask=mask)
    return x.to(tl.float32)


@triton.jit
def _scale(r, w_ptrs, y_ptrs, mask, inv_rms, X_DTYPE: tl.constexpr):
    """y = weight * cast(r * inv_rms): the cast to x's dtype first, then the weight product rounded once."""
    w = tl.load(w_ptrs, mask=mask, other=0.0).to(tl.float32)
    normed = (r * inv_rms).to(X_DTYPE).to(tl.float32)
    tl.store(y_ptrs, (w * normed).to(y_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, y_ptr, r_out_ptr,
    stride_x_t, stride_res_t, stride_y_t, stride_r_out_t,
    T, C, eps,
    HAS_RESIDUAL: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, SINGLE_PASS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_mask = (rows < T)[:, None]
    rows = rows.to(tl.int64)[:, None]  # (ROWS, 1)
    x_row, res_row = x_ptr + rows * stride_x_t, res_ptr + rows * stride_res_t
    y_row, r_out_row = y_ptr + rows * stride_y_t, r_out_ptr + rows * stride_r_out_t
    x_dtype = x_ptr.dtype.element_ty
    if SINGLE_PASS:
        cols = tl.arange(0, BLOCK_C)[None, :]  # (1, BLOCK_C)
        mask = row_mask & (cols < C)
        r = _add_residual(x_row + cols, res_row + cols, r_out_row + cols, mask, HAS_RESIDUAL)
        inv_rms = 1.0 / tl.sqrt_rn(tl.sum(r * r, axis=1) / C + eps)  # (ROWS,)
        _scale(r, w_ptr + cols, y_row + cols, mask, inv_rms[:, None], x_dtype)
    else:
        acc = tl.zeros((ROWS, BLOCK_C), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)[None, :]
            mask = row_mask & (cols < C)
            r = _add_residual(x_row + cols, res_row + cols, r_out_row + cols, mask, HAS_RESIDUAL)
            acc += r * r
        inv_rms = 1.0 / tl.sqrt_rn(tl.sum(acc, axis=1) / C + eps)
        tl.debug_barrier()  # the second pass re-reads r from r_out, written above by this program
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)[None, :]
            mask = row_mask & (cols < C)
            r = tl.load(r_out_row + cols, mask=mask, other=0.0).to(tl.float32)
            _scale(r, w_ptr + cols, y_row + cols, mask, inv_rms[:, None], x_dtype)


MAX_FUSED_C = 8192  # widest row kept whole in registers; wider rows loop over 4096-wide chunks


def _launch_config(c: int) -> dict:
    """Deterministic tiling: ~8 elements (16 bytes of bf16) per thread, several rows per program when C is narrow."""
    block_c = triton.next_power_of_2(c) if c <= MAX_FUSED_C else 4096
    rows = max(1, min(16, 1024 // block_c))
    num_warps = min(16, max(1, rows * block_c // 256))
    return dict(ROWS=rows, BLOCK_C=block_c, SINGLE_PASS=c <= MAX_FUSED_C, num_warps=num_warps)


@torch.library.custom_op("hovle::rms_norm", mutates_args=())
def _rms_norm_op(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    t, c = x.shape
    y = torch.empty((t, c), dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    r_out = torch.empty((t, c), dtype=x.dtype, device=x.device)
    if t == 0:
        return y, r_out
    cfg = _launch_config(c)
    res = residual if residual is not None else x  # unread when HAS_RESIDUAL is False
    grid = (triton.cdiv(t, cfg["ROWS"]),)
    _rms_norm_kernel[grid](
        x, res, weight, y, r_out,
        x.stride(0), res.stride(0), y.stride(0), r_out.stride(0),
        t, c, eps,
        HAS_RESIDUAL=residual is not None, **cfg,
        enable_fp_fusion=True,  # contracts only the sum of squares; every rounded output op stays a lone mul/add
    )  # fmt: skip
    return y, r_out


@_rms_norm_op.register_fake
def _(x, weight, eps, residual):
    y = x.new_empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype))
    return y, x.new_empty(x.shape)


def _check(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    if x.dim() != 2 or x.dtype not in FLOATS or x.stride(-1) != 1:
        raise ValueError(
            f"x must be a 2-D (T, C) fp16/bf16/fp32 tensor with a contiguous last dim; got shape {tuple(x.shape)}, "
            f"dtype {x.dtype}, strides {x.stride()}"
        )
    if weight.shape != (x.shape[1],) or weight.dtype not in FLOATS or weight.stride(-1) != 1:
        raise ValueError(
            f"weight must be a contiguous ({x.shape[1]},) float tensor; got shape {tuple(weight.shape)}, "
            f"dtype {weight.dtype}, strides {weight.stride()}"
        )
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype or residual.stride(-1) != 1:
            raise ValueError(
                f"residual must match x (shape {tuple(x.shape)}, dtype {x.dtype}, contiguous last dim); got shape "
                f"{tuple(residual.shape)}, dtype {residual.dtype}, strides {residual.stride()}"
            )
        if residual.device != x.device:
            raise ValueError(f"residual is on {residual.device} but x is on {x.device}")


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused residual add + RMSNorm (Triton), same results as `rms_norm_ref` (see the module docstring).

    x: (T, C) fp16/bf16/fp32, last dim contiguous, rows may be strided; weight: (C,) float; eps: float;
    residual: None or (T, C) like x. Returns y: (T, C) in promote(weight, x) dtype and the new residual
    x + residual: (T, C) in x's dtype (a copy of x when residual is None).
    """
    _check(x, weight, residual)
    return _rms_norm_op(x, weight, float(eps), residual)
