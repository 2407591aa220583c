"""LayerNorm with bias and an optional fused residual add (CLIP, DeBERTa, BERT-style fusion layers).

    r = x + residual                    (in the activation dtype, as the reference adds)
    y = (r - mean(r)) * rsqrt(var(r) + eps) * weight + bias     statistics and affine in fp32, rounded once

x, residual: (T, C) with a contiguous last dim (rows may be strided); weight, bias: (C,). Returns (y, r) with y in
x's dtype (torch's layer_norm on half inputs computes in fp32 and rounds once, as here); without a residual r is x.
var is the biased (population) variance, as nn.LayerNorm.
"""

from __future__ import annotations

import torch


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
