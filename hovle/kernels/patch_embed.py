"""Patch embedding of square tiles: a p x p stride-p convolution with bias, plus the position embedding.

pixels: (N, 3, S, S) float; weight: (C, 3, p, p); bias: (C,); pos: (P, C) with P = (S/p)^2, already
interpolated to the tile grid. Returns (N, P, C) in the weight dtype, patches row-major (index = row*g + col).
With shuffle=True the result is returned pixel-shuffled, (N, P/4, 4C), exactly `pixel_shuffle_ref` of it.

Kernel: the stride-p conv is a GEMM out[m, c] = sum_k A[m, k] * W[c, k] over M = N*P patches and the K = 3*p*p
reduction axis, with implicit im2col: no unfold copy exists; the A tile (BLOCK_M patches x BLOCK_K of k) is read
straight from the image at offset row(m) + col(k), a per-patch part (n, patch row, patch column) plus a per-k part
(channel, dy, dx). K is walked as the 3p pixel rows (channel, dy) of a patch, each padded from p to DX_PAD =
next_pow2(p) lanes (p = 14: 42 rows of 16, masked), so every A piece is a contiguous run of pixels and both operands
stream through pipelined async copies. The weight is read with C innermost (`weight_layout`; other layouts are
copied into it). Pixels are rounded to the weight dtype on load (as the reference does), products accumulate in fp32
(IEEE for fp32 weights, never tf32), and the epilogue adds bias and pos in fp32, rounds once to the weight dtype and
stores either row-major or straight into the shuffled layout (patch (r, s) -> token (r//2)*(g/2) + s//2, channel
(2*(r%2) + s%2)*C + c; see hovle/kernels/pixel_shuffle.py). pixels, bias and pos may have any strides.
"""

import torch
import torch.nn.functional as F

from ._checks import FLOATS
from ._triton import fitting_configs, tl, triton, triton_usable, tuning_configs
from .pixel_shuffle import pixel_shuffle_ref


def patch_embed_ref(
    pixels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pos: torch.Tensor, shuffle: bool = False
) -> torch.Tensor:
    p = weight.shape[-1]
    out = F.conv2d(pixels.to(weight.dtype).float(), weight.float(), bias.float(), stride=p)  # (N, C, g, g)
    out = out.flatten(2).transpose(1, 2)  # (N, C, g*g) -> (N, P, C)
    out = (out + pos.float()).to(weight.dtype)
    return pixel_shuffle_ref(out, pixels.shape[-1] // p) if shuffle else out


_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
]


# SHUFFLE is deliberately not in the key: for a given shape both layouts run the same config, so the shuffled
# output holds bit-for-bit the values of the unshuffled one. M_BUCKET (next power of two of N) bounds re-tuning.
def _smem(config, args: dict, consts: dict) -> int:
    """Shared memory of the pipelined tiles: num_stages x (pixels BLOCK_M x BLOCK_K + weight BLOCK_K x BLOCK_N)."""
    m, n, k = (config.kwargs[b] for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return config.num_stages * k * (m * args["px_ptr"].element_size() + n * args["w_ptr"].element_size())


@triton.autotune(
    configs=tuning_configs(_CONFIGS),
    key=["M_BUCKET", "C", "PATCH"],
    prune_configs_by={"early_config_prune": fitting_configs(_smem)},
)
@triton.jit
def _patch_embed_kernel(px_ptr, w_ptr, bias_ptr, pos_ptr, out_ptr,
                        stride_px_n, stride_px_c, stride_px_h, stride_px_w,
                        stride_w_o, stride_w_c, stride_w_h, stride_w_w, stride_bias_c, stride_pos_p, stride_pos_c,
                        M, C, M_BUCKET,
                        PATCH: tl.constexpr, DX_PAD: tl.constexpr, GRID: tl.constexpr, SHUFFLE: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr):  # fmt: skip
    # Column blocks of one row block are adjacent program ids: they share the gathered pixels in L2.
    num_n = tl.cdiv(C, BLOCK_N)
    pid_m = tl.program_id(0) // num_n
    pid_n = tl.program_id(0) % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < C
    img = offs_m // (GRID * GRID)
    patch = offs_m % (GRID * GRID)
    r = patch // GRID
    s = patch % GRID
    a_row = img.to(tl.int64) * stride_px_n + (r * PATCH).to(tl.int64) * stride_px_h
    a_row += (s * PATCH).to(tl.int64) * stride_px_w
    w_col = offs_n.to(tl.int64) * stride_w_o

    # K is walked as (channel, dy) pixel rows of DX_PAD lanes (dx < PATCH valid): each A row piece is a contiguous
    # run of the image, so both operands stream through async copies into shared memory.
    tl.static_assert(BLOCK_K % DX_PAD == 0)
    lane = tl.arange(0, BLOCK_K)
    dx = lane % DX_PAD
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for row0 in range(0, 3 * PATCH, BLOCK_K // DX_PAD):
        row = row0 + lane // DX_PAD
        mask_k = (dx < PATCH) & (row < 3 * PATCH)
        ch = row // PATCH
        dy = row % PATCH
        a_k = ch.to(tl.int64) * stride_px_c + dy.to(tl.int64) * stride_px_h + dx.to(tl.int64) * stride_px_w
        w_k = ch.to(tl.int64) * stride_w_c + dy.to(tl.int64) * stride_w_h + dx.to(tl.int64) * stride_w_w
        a = tl.load(px_ptr + a_row[:, None] + a_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(w_ptr + w_k[:, None] + w_col[None, :], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a.to(w_ptr.dtype.element_ty), b, acc, input_precision=DOT_PRECISION)

    bias = tl.load(bias_ptr + offs_n.to(tl.int64) * stride_bias_c, mask=mask_n, other=0.0).to(tl.float32)
    pos_offs = patch.to(tl.int64)[:, None] * stride_pos_p + offs_n.to(tl.int64)[None, :] * stride_pos_c
    mask = mask_m[:, None] & mask_n[None, :]
    pos = tl.load(pos_ptr + pos_offs, mask=mask, other=0.0).to(tl.float32)
    out = (acc + bias[None, :] + pos).to(out_ptr.dtype.element_ty)
    if SHUFFLE:
        # Contiguous (N, P/4, 4C): patch (r, s) -> token (r//2)*(g/2) + s//2, channel block 2*(r%2) + s%2.
        token = img.to(tl.int64) * (GRID * GRID // 4) + (r // 2) * (GRID // 2) + s // 2
        out_row = token * (4 * C) + (2 * (r % 2) + s % 2) * C
    else:
        out_row = offs_m.to(tl.int64) * C  # contiguous (N, P, C)
    tl.store(out_ptr + out_row[:, None] + offs_n[None, :], out, mask=mask)


def _check(pixels, weight, bias, pos, shuffle) -> tuple[int, int]:
    """Validates shapes and dtypes; returns (patch size p, grid side g)."""
    if weight.dim() != 4 or weight.shape[1] != 3 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"weight must be (C, 3, p, p), got {tuple(weight.shape)}")
    c, _, p, _ = weight.shape
    if pixels.dim() != 4 or pixels.shape[1] != 3 or pixels.shape[2] != pixels.shape[3]:
        raise ValueError(f"pixels must be (N, 3, S, S), got {tuple(pixels.shape)}")
    if pixels.shape[-1] % p:
        raise ValueError(f"pixels side S = {pixels.shape[-1]} is not a multiple of the patch size p = {p}")
    g = pixels.shape[-1] // p
    if bias.shape != (c,):
        raise ValueError(f"bias must be (C,) = ({c},), got {tuple(bias.shape)}")
    if pos.shape != (g * g, c):
        raise ValueError(f"pos must be (P, C) = ({g * g}, {c}), got {tuple(pos.shape)}")
    if p > 32:
        raise ValueError(f"patch size p = {p} is above the 32 this kernel tiles (weight {tuple(weight.shape)})")
    if shuffle and g % 2:
        raise ValueError(f"shuffle=True needs an even patch grid, got g = {g} (S = {pixels.shape[-1]}, p = {p})")
    for name, t in (("pixels", pixels), ("weight", weight), ("bias", bias), ("pos", pos)):
        if t.dtype not in FLOATS:
            raise TypeError(f"{name} must be float32/float16/bfloat16, got {t.dtype}")
    return p, g


def weight_layout(weight: torch.Tensor) -> torch.Tensor:
    """The same (C, 3, p, p) weight stored with C innermost, the layout patch_embed reads fastest (a copy, once)."""
    return weight.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)  # (3, p, p, C) storage viewed as (C, 3, p, p)


@torch.library.custom_op("hovle::patch_embed", mutates_args=())
def patch_embed(
    pixels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pos: torch.Tensor, shuffle: bool = False
) -> torch.Tensor:
    """Triton patch embedding (implicit-im2col GEMM, bias + position embedding fused, optional fused shuffle).

    pixels: (N, 3, S, S) fp32/fp16/bf16, any strides (rounded to weight.dtype on load).
    weight: (C, 3, p, p) fp32/fp16/bf16, p <= 32; any strides, fastest as `weight_layout(w)` (else copied so).
    bias: (C,). pos: (P, C), P = (S/p)^2, any strides.
    Returns (N, P, C) in weight.dtype, or (N, P/4, 4C) pixel-shuffled when shuffle=True (needs an even S/p).
    """
    p, g = _check(pixels, weight, bias, pos, shuffle)
    for name, t in (("pixels", pixels), ("bias", bias), ("pos", pos)):
        if t.device != weight.device:
            raise ValueError(f"{name} is on {t.device} but weight is on {weight.device}")
    if not triton_usable(weight.device.type):
        raise ValueError(f"weight is on {weight.device}: the Triton patch_embed needs CUDA (or TRITON_INTERPRET=1)")
    if weight.stride(0) != 1:
        # The kernel wants C contiguous (vectorised async weight loads: a C-row of (3, p, p) is 588 elements, not
        # 16-byte aligned). Callers that keep the weight in this layout (see `weight_layout`) skip this copy.
        weight = weight_layout(weight)
    n, c = pixels.shape[0], weight.shape[0]
    m = n * g * g
    shape = (n, g * g // 4, 4 * c) if shuffle else (n, g * g, c)
    out = torch.empty(shape, dtype=weight.dtype, device=weight.device)
    if m == 0 or c == 0:
        return out

    def launch(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(c, meta["BLOCK_N"]),)

    _patch_embed_kernel[launch](
        pixels, weight, bias, pos, out,
        *pixels.stride(), *weight.stride(), *bias.stride(), *pos.stride(),
        m, c, triton.next_power_of_2(n),
        PATCH=p, DX_PAD=triton.next_power_of_2(p), GRID=g, SHUFFLE=shuffle,
        DOT_PRECISION="ieee" if weight.dtype == torch.float32 else "tf32",
    )  # fmt: skip
    return out


@patch_embed.register_fake
def _(pixels, weight, bias, pos, shuffle=False):
    p, g = _check(pixels, weight, bias, pos, shuffle)
    n, c = pixels.shape[0], weight.shape[0]
    return weight.new_empty((n, g * g // 4, 4 * c) if shuffle else (n, g * g, c))
