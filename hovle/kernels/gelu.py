"""GELU activations of the encoder MLPs, computed in fp32 and rounded once to x's dtype.

    kind "erf":   x * 0.5 * (1 + erf(x / sqrt(2)))      nn.GELU() (DeBERTa, BERT layers, projectors)
    kind "tanh":  x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    kind "quick": x * sigmoid(1.702 x)                   CLIP's QuickGELU

x: any shape, any strides. Returns a tensor of x's shape and dtype.

Kernel: elementwise over the flat contiguous tensor (a strided x is copied to a contiguous one first: the encoder
MLPs hand over fresh linear outputs, so the copy is never paid there), BLOCK elements per program. The tanh form
is evaluated as x * sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3), the same function without 1 + tanh's
cancellation for negative x; both sigmoids are x / (1 + exp(-a x)) with an IEEE division (exp overflows to inf for
very negative x and gives -0.0, the limit). Pure bandwidth: one read and one write per element.
"""

from __future__ import annotations

import math

import torch

from ._checks import FLOATS
from ._triton import tl, triton

KINDS = ("erf", "tanh", "quick")


def gelu_ref(x: torch.Tensor, kind: str = "erf") -> torch.Tensor:
    if kind not in KINDS:
        raise ValueError(f"gelu kind {kind!r} is not one of {KINDS}")
    xf = x.float()
    if kind == "quick":
        y = xf * torch.sigmoid(1.702 * xf)
    elif kind == "tanh":
        y = 0.5 * xf * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (xf + 0.044715 * xf.pow(3))))
    else:
        y = 0.5 * xf * (1.0 + torch.erf(xf * (1.0 / math.sqrt(2.0))))
    return y.to(x.dtype)


@triton.jit
def _gelu_kernel(x_ptr, y_ptr, n, KIND: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if KIND == 0:  # erf
        y = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif KIND == 1:  # tanh: 0.5 (1 + tanh z) = sigmoid(2z)
        z2 = 1.5957691216057308 * (x + 0.044715 * x * x * x)  # 2 sqrt(2/pi) (x + 0.044715 x^3)
        y = tl.div_rn(x, 1.0 + tl.exp(-z2))
    else:  # quick
        y = tl.div_rn(x, 1.0 + tl.exp(-1.702 * x))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _launch_config(n: int) -> dict:
    """8 elements per thread in 4-warp programs for large tensors; one smaller program for tiny ones."""
    block = min(4096, max(128, triton.next_power_of_2(n)))
    return dict(BLOCK=block, num_warps=max(1, min(8, block // 512)))


@torch.library.custom_op("hovle::gelu", mutates_args=())
def _gelu_op(x: torch.Tensor, kind: str) -> torch.Tensor:
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    n = x.numel()
    if n == 0:
        return y
    cfg = _launch_config(n)
    _gelu_kernel[(triton.cdiv(n, cfg["BLOCK"]),)](x, y, n, KIND=KINDS.index(kind), **cfg)
    return y


@_gelu_op.register_fake
def _(x, kind):
    return x.new_empty(x.shape)


def gelu(x: torch.Tensor, kind: str = "erf") -> torch.Tensor:
    """GELU of `kind` (Triton), same results as `gelu_ref` up to fp32 rounding before the final cast.

    x: any shape, fp16/bf16/fp32, any strides (a non-contiguous x is copied first); kind: "erf", "tanh" or
    "quick". Returns a contiguous tensor of x's shape and dtype.
    """
    if kind not in KINDS:
        raise ValueError(f"gelu kind {kind!r} is not one of {KINDS}")
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOATS:
        found = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a float16, bfloat16 or float32 tensor; got {found}")
    return _gelu_op(x.contiguous(), kind)
