"""RMSNorm with an optional fused residual add, InternLM2 numerics.

    r = x + residual            (in the activation dtype, as the reference adds)
    y = weight * cast(r * rsqrt(mean(r^2) + eps))   statistics in fp32, cast back, THEN the weight

x, residual: (T, C) contiguous rows; weight: (C,). Returns (y, r); without a residual r is x itself.
"""

import torch


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    if residual is not None:
        x = x + residual
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * y.to(x.dtype), x
