"""Pixel shuffle with ratio 0.5: merge each 2x2 block of patches into one token of 4x the width.

x: (N, g*g, C) patches of a g x g grid (row-major). Returns (N, (g/2)^2, 4C) where token t = i*(g/2) + j and
out[n, t, dr*2C + ds*C + c] = x[n, (2i+dr)*g + (2j+ds), c]: InternVL's shuffle with the final transpose
(docs/hovle.md §2.2). Pure data movement: any implementation must be bit-exact.

Kernel: one program per (source patch row, block of C). Patch (r, s) of tile n is read once (any strides: x may be
a strided view) and written as one contiguous C-run of the contiguous output at token (r//2)*(g/2) + s//2, channel
offset (2*(r%2) + s%2)*C, so every load and store is a contiguous run of C elements.
"""

import torch

from ._triton import tl, triton, triton_usable


def pixel_shuffle_ref(x: torch.Tensor, grid: int) -> torch.Tensor:
    n, p, c = x.shape
    h = grid // 2
    blocks = x.reshape(n, h, 2, h, 2, c)  # (N, i, dr, j, ds, C)
    return blocks.permute(0, 1, 3, 2, 4, 5).reshape(n, h * h, 4 * c)  # (N, i, j, dr, ds, C) -> (N, T, 4C)


@triton.jit
def _pixel_shuffle_kernel(x_ptr, out_ptr, stride_x_n, stride_x_p, stride_x_c, P, C, GRID: tl.constexpr,
                          BLOCK_C: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)  # n * P + patch
    n = row // P
    patch = row % P
    r = patch // GRID
    s = patch % GRID
    token = (r // 2) * (GRID // 2) + s // 2
    quadrant = 2 * (r % 2) + s % 2
    offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = offs < C
    src = x_ptr + n.to(tl.int64) * stride_x_n + patch.to(tl.int64) * stride_x_p + offs.to(tl.int64) * stride_x_c
    vals = tl.load(src, mask=mask)
    # Output is contiguous (N, P/4, 4C): row n*P/4 + token has 4C elements.
    dst = out_ptr + (n.to(tl.int64) * (P // 4) + token) * (4 * C) + quadrant * C + offs
    tl.store(dst, vals, mask=mask)


def _check(x: torch.Tensor, grid: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (N, g*g, C) tensor, got {getattr(x, 'shape', type(x))}")
    if not isinstance(grid, int) or grid <= 0 or grid % 2:
        raise ValueError(f"grid must be a positive even int, got {grid!r}")
    if x.shape[1] != grid * grid:
        raise ValueError(f"x has {x.shape[1]} patches per tile (shape {tuple(x.shape)}), expected grid^2 = {grid**2}")


@torch.library.custom_op("hovle::pixel_shuffle", mutates_args=())
def pixel_shuffle(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Triton pixel shuffle, bit-exact with `pixel_shuffle_ref`.

    x: (N, grid*grid, C), any dtype, any strides. grid: even patch-grid side g. Returns (N, (g/2)^2, 4C) contiguous.
    """
    _check(x, grid)
    if not triton_usable(x.device.type):
        raise ValueError(f"x is on {x.device}: the Triton pixel_shuffle needs a CUDA tensor (or TRITON_INTERPRET=1)")
    n, p, c = x.shape
    out = torch.empty((n, p // 4, 4 * c), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_c = min(triton.next_power_of_2(c), 2048)
    num_warps = 4 if block_c * x.element_size() <= 4096 else 8
    launch = (n * p, triton.cdiv(c, block_c))
    _pixel_shuffle_kernel[launch](
        x, out, *x.stride(), p, c, GRID=grid, BLOCK_C=block_c, num_warps=num_warps
    )  # fmt: skip
    return out


@pixel_shuffle.register_fake
def _(x: torch.Tensor, grid: int) -> torch.Tensor:
    _check(x, grid)
    n, p, c = x.shape
    return x.new_empty((n, p // 4, 4 * c))
