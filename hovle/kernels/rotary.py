"""Rotate-half rotary position embedding (GPT-NeoX / InternLM2 style, not interleaved).

    q' = q * cos + rotate_half(q) * sin,   rotate_half(x) = concat(-x[D/2:], x[:D/2])

q: (T, Hq, D), k: (T, Hkv, D); cos, sin: (T, D) per-token tables (concat(freqs, freqs)), already in the
activation dtype as the reference casts them. Returns new (q', k'). The attention, decode-attention and KV-store
ops take the same cos/sin as optional arguments and rotate on the fly, so the engine needs no separate pass.

Kernel: one program per token rotates all heads of q and k (the token's cos/sin rows are read once), as two
(H, D/2) halves: x1' = x1*c1 - x2*s1, x2' = x2*c2 + x1*s2, in fp32 with FMA contraction disabled, so every product
and sum is rounded as the reference's separate fp32 ops round them: bit-exact with `rotate_ref` up to the final cast.
q and k may be strided views (T, H, D) of the fused qkv projection (last dim contiguous); outputs are contiguous.
"""

import torch

from ._checks import FLOATS
from ._triton import tl, triton, warps


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One tensor (T, H, D) rotated by per-token tables (T, D); fp32 math, cast back."""
    c, s = cos.float()[:, None, :], sin.float()[:, None, :]  # (T, 1, D): broadcast over heads
    xf = x.float()
    return (xf * c + _rotate_half(xf) * s).to(x.dtype)


def rotary_ref(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return rotate_ref(q, cos, sin), rotate_ref(k, cos, sin)


@triton.jit
def rotate_halves(x1, x2, c1, c2, s1, s2):
    """fp32 halves (.., D/2) of x and of the cos/sin rows -> rotated halves, rounded op by op as `rotate_ref`.

    Bit-exact only when the calling kernel is launched with enable_fp_fusion=False (no FMA contraction).
    """
    return x1 * c1 + (-x2) * s1, x2 * c2 + x1 * s2


@triton.jit
def _rotate_heads(x_ptr, out_ptr, stride_x_t, stride_x_h, stride_out_t, stride_out_h, t, H, c1, c2, s1, s2,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):  # fmt: skip
    heads = tl.arange(0, BLOCK_H)[:, None].to(tl.int64)  # (BLOCK_H, 1)
    cols = tl.arange(0, BLOCK_HALF)[None, :]  # (1, BLOCK_HALF)
    mask = (heads < H) & (cols < HALF)
    x_ptrs = x_ptr + t * stride_x_t + heads * stride_x_h + cols
    x1 = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    o1, o2 = rotate_halves(x1, x2, c1, c2, s1, s2)
    out_ptrs = out_ptr + t * stride_out_t + heads * stride_out_h + cols
    tl.store(out_ptrs, o1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptrs + HALF, o2.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr,
    stride_q_t, stride_q_h, stride_k_t, stride_k_h, stride_cos_t, stride_sin_t,
    stride_q_out_t, stride_q_out_h, stride_k_out_t, stride_k_out_h,
    Hq, Hkv,
    HALF: tl.constexpr, HAS_K: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_HALF)[None, :]  # (1, BLOCK_HALF): broadcast over heads
    cmask = cols < HALF
    c1 = tl.load(cos_ptr + t * stride_cos_t + cols, mask=cmask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + t * stride_cos_t + HALF + cols, mask=cmask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + t * stride_sin_t + cols, mask=cmask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + t * stride_sin_t + HALF + cols, mask=cmask, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr, q_out_ptr, stride_q_t, stride_q_h, stride_q_out_t, stride_q_out_h, t, Hq,
                  c1, c2, s1, s2, HALF, BLOCK_HQ, BLOCK_HALF)  # fmt: skip
    if HAS_K:
        _rotate_heads(k_ptr, k_out_ptr, stride_k_t, stride_k_h, stride_k_out_t, stride_k_out_h, t, Hkv,
                      c1, c2, s1, s2, HALF, BLOCK_HKV, BLOCK_HALF)  # fmt: skip


def _launch(q: torch.Tensor, k: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor):
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device) if k is not None else q_out
    if q.shape[0] == 0:
        return q_out, k_out
    k_in = k if k is not None else q  # unread when HAS_K is False
    half, hq, hkv = q.shape[2] // 2, q.shape[1], k_in.shape[1]
    tile = (max(hq, hkv) if k is not None else hq) * q.shape[2]
    _rotary_kernel[(q.shape[0],)](
        q,
        k_in,
        cos,
        sin,
        q_out,
        k_out,
        q.stride(0),
        q.stride(1),
        k_in.stride(0),
        k_in.stride(1),
        cos.stride(0),
        sin.stride(0),
        q_out.stride(0),
        q_out.stride(1),
        k_out.stride(0),
        k_out.stride(1),
        hq,
        hkv,
        HALF=half,
        HAS_K=k is not None,
        BLOCK_HQ=triton.next_power_of_2(hq),
        BLOCK_HKV=triton.next_power_of_2(hkv),
        BLOCK_HALF=triton.next_power_of_2(half),
        num_warps=warps(tile),
        enable_fp_fusion=False,
    )
    return q_out, k_out


@torch.library.custom_op("hovle::rotary", mutates_args=())
def _rotary_op(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(q, k, cos, sin)


@_rotary_op.register_fake
def _(q, k, cos, sin):
    return q.new_empty(q.shape), k.new_empty(k.shape)


@torch.library.custom_op("hovle::rotate", mutates_args=())
def _rotate_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _launch(x, None, cos, sin)[0]


@_rotate_op.register_fake
def _(x, cos, sin):
    return x.new_empty(x.shape)


def check_rotary_args(name: str, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> None:
    """Validates a (T, H, D) input `name` and, when given, its (T, D) cos/sin tables (shared with the fused ops)."""
    if x.dim() != 3 or x.dtype not in FLOATS or x.stride(-1) != 1:
        raise ValueError(
            f"{name} must be a (T, H, D) fp16/bf16/fp32 tensor with a contiguous last dim; got shape "
            f"{tuple(x.shape)}, dtype {x.dtype}, strides {x.stride()}"
        )
    if cos is None and sin is None:
        return
    if x.shape[2] % 2:
        raise ValueError(f"{name}: rotate-half needs an even head dim D; got D={x.shape[2]}")
    for tname, tab in (("cos", cos), ("sin", sin)):
        if tab is None:
            raise ValueError(f"cos and sin must be given together; {tname} is None")
        want = (x.shape[0], x.shape[2])
        if tab.shape != want or tab.dtype not in FLOATS or tab.stride(-1) != 1:
            raise ValueError(
                f"{tname} must be a float (T, D) = {want} table with a contiguous last dim; got shape "
                f"{tuple(tab.shape)}, dtype {tab.dtype}, strides {tab.stride()}"
            )
        if tab.device != x.device:
            raise ValueError(f"{tname} is on {tab.device} but {name} is on {x.device}")


def _require_tables(cos: torch.Tensor | None, sin: torch.Tensor | None) -> None:
    if cos is None or sin is None:
        raise ValueError(f"cos and sin tables are required; got cos={type(cos).__name__}, sin={type(sin).__name__}")


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One tensor rotated (Triton), same results as `rotate_ref`.

    x: (T, H, D) fp16/bf16/fp32, last dim contiguous; cos, sin: (T, D) float tables. Returns (T, H, D) in x's dtype.
    """
    _require_tables(cos, sin)
    check_rotary_args("x", x, cos, sin)
    return _rotate_op(x, cos, sin)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k rotated in one launch (Triton), same results as `rotary_ref`.

    q: (T, Hq, D), k: (T, Hkv, D), fp16/bf16/fp32 with a contiguous last dim (strided views are fine);
    cos, sin: (T, D) float tables. Returns contiguous (q', k') in the dtypes of q and k.
    """
    if k.device != q.device:
        raise ValueError(f"k is on {k.device} but q is on {q.device}")
    _require_tables(cos, sin)
    check_rotary_args("q", q, cos, sin)
    check_rotary_args("k", k, cos, sin)
    return _rotary_op(q, k, cos, sin)
