"""LayerNorm with bias and an optional fused residual add (CLIP, DeBERTa, BERT-style fusion layers).

    r = x + residual                    (in the activation dtype, as the reference adds)
    y = (r - mean(r)) * rsqrt(var(r) + eps) * weight + bias     statistics and affine in fp32, rounded once

x, residual: (T, C) with a contiguous last dim (rows may be strided); weight, bias: (C,). Returns (y, r) with y in
x's dtype (torch's layer_norm on half inputs computes in fp32 and rounds once, as here); without a residual r is x
in the reference and a fresh copy of x in the kernel (a custom op may not alias an input).
var is the biased (population) variance, as nn.LayerNorm.

Kernel: the rms_norm layout (one program per row, or ROWS rows for narrow C; the whole row in registers for
C <= 8192, one read of x and residual, one write of y and r). The variance is taken around the mean, two sums over
the row in registers (not E[r^2] - mean^2, which cancels catastrophically for rows far from zero). Rows wider than
8192 take three passes over BLOCK_C chunks (sum, centred squares, output), re-reading r from the output they wrote.
The add is rounded to x's dtype once (bit-exact with the reference); the normalised, scaled and shifted value is
computed in fp32 and rounded once to x's dtype.
"""

from __future__ import annotations

import torch

from ._checks import FLOATS
from ._triton import tl, triton


def layer_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    if residual is not None:
        x = x + residual
    xf = x.float()
    mean = xf.mean(dim=-1, keepdim=True)
    centred = xf - mean
    var = centred.pow(2).mean(dim=-1, keepdim=True)
    y = centred * torch.rsqrt(var + eps) * weight.float() + bias.float()
    return y.to(x.dtype), x


@triton.jit
def _add_residual(x_ptrs, res_ptrs, r_out_ptrs, mask, HAS_RESIDUAL: tl.constexpr):
    """r = x (+ residual) rounded to x's dtype, written to the residual output; returned in fp32."""
    x = tl.load(x_ptrs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(res_ptrs, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
    tl.store(r_out_ptrs, x, mask=mask)
    return x.to(tl.float32)


@triton.jit
def _affine(centred, w_ptrs, b_ptrs, y_ptrs, mask, inv_std):
    """y = centred * inv_std * weight + bias in fp32, rounded once to y's dtype."""
    w = tl.load(w_ptrs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, (centred * inv_std * w + b).to(y_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _layer_norm_kernel(
    x_ptr, res_ptr, w_ptr, b_ptr, y_ptr, r_out_ptr,
    stride_x_t, stride_res_t, stride_y_t, stride_r_out_t,
    T, C, eps,
    HAS_RESIDUAL: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, SINGLE_PASS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_mask = (rows < T)[:, None]
    rows = rows.to(tl.int64)[:, None]  # (ROWS, 1)
    x_row, res_row = x_ptr + rows * stride_x_t, res_ptr + rows * stride_res_t
    y_row, r_out_row = y_ptr + rows * stride_y_t, r_out_ptr + rows * stride_r_out_t
    if SINGLE_PASS:
        cols = tl.arange(0, BLOCK_C)[None, :]  # (1, BLOCK_C)
        mask = row_mask & (cols < C)
        r = _add_residual(x_row + cols, res_row + cols, r_out_row + cols, mask, HAS_RESIDUAL)
        mean = tl.sum(r, axis=1) / C  # (ROWS,)
        centred = tl.where(mask, r - mean[:, None], 0.0)  # padding columns must not add (-mean)^2
        inv_std = 1.0 / tl.sqrt_rn(tl.sum(centred * centred, axis=1) / C + eps)
        _affine(centred, w_ptr + cols, b_ptr + cols, y_row + cols, mask, inv_std[:, None])
    else:
        acc = tl.zeros((ROWS, BLOCK_C), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)[None, :]
            mask = row_mask & (cols < C)
            acc += _add_residual(x_row + cols, res_row + cols, r_out_row + cols, mask, HAS_RESIDUAL)
        mean = tl.sum(acc, axis=1)[:, None] / C  # (ROWS, 1)
        tl.debug_barrier()  # the later passes re-read r from r_out, written above by this program
        acc = tl.zeros((ROWS, BLOCK_C), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)[None, :]
            mask = row_mask & (cols < C)
            centred = tl.where(mask, tl.load(r_out_row + cols, mask=mask, other=0.0).to(tl.float32) - mean, 0.0)
            acc += centred * centred
        inv_std = 1.0 / tl.sqrt_rn(tl.sum(acc, axis=1)[:, None] / C + eps)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)[None, :]
            mask = row_mask & (cols < C)
            centred = tl.load(r_out_row + cols, mask=mask, other=0.0).to(tl.float32) - mean
            _affine(centred, w_ptr + cols, b_ptr + cols, y_row + cols, mask, inv_std)


MAX_FUSED_C = 8192  # widest row kept whole in registers; wider rows loop over 4096-wide chunks


def _launch_config(c: int) -> dict:
    """Deterministic tiling: ~8 elements (16 bytes of bf16) per thread, several rows per program when C is narrow."""
    block_c = triton.next_power_of_2(c) if c <= MAX_FUSED_C else 4096
    rows = max(1, min(16, 1024 // block_c))
    num_warps = min(16, max(1, rows * block_c // 256))
    return dict(ROWS=rows, BLOCK_C=block_c, SINGLE_PASS=c <= MAX_FUSED_C, num_warps=num_warps)


@torch.library.custom_op("hovle::layer_norm", mutates_args=())
def _layer_norm_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    t, c = x.shape
    y = torch.empty((t, c), dtype=x.dtype, device=x.device)
    r_out = torch.empty((t, c), dtype=x.dtype, device=x.device)
    if t == 0:
        return y, r_out
    cfg = _launch_config(c)
    res = residual if residual is not None else x  # unread when HAS_RESIDUAL is False
    grid = (triton.cdiv(t, cfg["ROWS"]),)
    _layer_norm_kernel[grid](
        x, res, weight, bias, y, r_out,
        x.stride(0), res.stride(0), y.stride(0), r_out.stride(0),
        t, c, eps,
        HAS_RESIDUAL=residual is not None, **cfg,
    )  # fmt: skip
    return y, r_out


@_layer_norm_op.register_fake
def _(x, weight, bias, eps, residual):
    return x.new_empty(x.shape), x.new_empty(x.shape)


def _check_param(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.shape != (x.shape[1],) or t.dtype not in FLOATS or t.stride(-1) != 1:
        raise ValueError(
            f"{name} must be a contiguous ({x.shape[1]},) float tensor; got shape {tuple(t.shape)}, "
            f"dtype {t.dtype}, strides {t.stride()}"
        )
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None) -> None:
    if x.dim() != 2 or x.dtype not in FLOATS or x.stride(-1) != 1:
        raise ValueError(
            f"x must be a 2-D (T, C) fp16/bf16/fp32 tensor with a contiguous last dim; got shape {tuple(x.shape)}, "
            f"dtype {x.dtype}, strides {x.stride()}"
        )
    _check_param("weight", weight, x)
    _check_param("bias", bias, x)
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype or residual.stride(-1) != 1:
            raise ValueError(
                f"residual must match x (shape {tuple(x.shape)}, dtype {x.dtype}, contiguous last dim); got shape "
                f"{tuple(residual.shape)}, dtype {residual.dtype}, strides {residual.stride()}"
            )
        if residual.device != x.device:
            raise ValueError(f"residual is on {residual.device} but x is on {x.device}")


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused residual add + LayerNorm (Triton), same results as `layer_norm_ref` (see the module docstring).

    x: (T, C) fp16/bf16/fp32, last dim contiguous, rows may be strided; weight, bias: (C,) float, contiguous, any
    float dtype; eps: float; residual: None or (T, C) like x. Returns y: (T, C) in x's dtype and the new residual
    x + residual: (T, C) in x's dtype (a copy of x when residual is None).
    """
    _check(x, weight, bias, residual)
    return _layer_norm_op(x, weight, bias, float(eps), residual)
