"""Pixel shuffle with ratio 0.5: merge each 2x2 block of patches into one token of 4x the width.

x: (N, g*g, C) patches of a g x g grid (row-major). Returns (N, (g/2)^2, 4C) where token t = i*(g/2) + j and
out[n, t, dr*2C + ds*C + c] = x[n, (2i+dr)*g + (2j+ds), c]: InternVL's shuffle with the final transpose
(spec section 2.2). Pure data movement: any implementation must be bit-exact.
"""

import torch


def pixel_shuffle_ref(x: torch.Tensor, grid: int) -> torch.Tensor:
    n, p, c = x.shape
    h = grid // 2
    blocks = x.reshape(n, h, 2, h, 2, c)  # (N, i, dr, j, ds, C)
    return blocks.permute(0, 1, 3, 2, 4, 5).reshape(n, h * h, 4 * c)  # (N, i, j, dr, ds, C) -> (N, T, 4C)
