"""Patch embedding of square tiles: a p x p stride-p convolution with bias, plus the position embedding.

pixels: (N, 3, S, S) float; weight: (C, 3, p, p); bias: (C,); pos: (P, C) with P = (S/p)^2, already
interpolated to the tile grid. Returns (N, P, C) in the weight dtype, patches row-major (index = row*g + col).
"""

import torch
import torch.nn.functional as F


def patch_embed_ref(pixels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    p = weight.shape[-1]
    out = F.conv2d(pixels.to(weight.dtype).float(), weight.float(), bias.float(), stride=p)  # (N, C, g, g)
    out = out.flatten(2).transpose(1, 2)  # (N, C, g*g) -> (N, P, C)
    return (out + pos.float()).to(weight.dtype)
