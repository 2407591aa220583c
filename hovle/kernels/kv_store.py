"""Scatter one forward's keys and values into the paged KV cache (in place, bit-exact).

k, v: (T, Hkv, D); k_cache, v_cache: (N_blocks, Hkv, P, D) pages (hovle/kernels/_paged.py); blocks, offsets: (T,) int:
token t goes to cache[blocks[t], :, offsets[t]] (the caller resolved its position through the page table). With
cos, sin: (T, D) the keys are rotated (rotate-half RoPE, `rotate_ref`) on the way in, so the engine needs no
separate rotary pass over k.

Kernel: one program per token moves all Hkv heads of its key and value rows ((Hkv, D) tiles; k and v may be strided
views of the fused qkv projection output, last dim contiguous; the caches may be any views with a contiguous last
dim). The rotation runs in fp32 with FMA contraction disabled (`rotary.rotate_halves`), then casts to k's dtype and
to the cache dtype as the reference does, so the result is bit-exact. Targets are read on the device (no host sync,
CUDA-graph capturable); a token whose page or offset lies outside the cache is skipped rather than written out of
bounds (the reference would raise instead).
"""

import torch

from ._checks import FLOATS, check_index, check_same_device, require
from ._triton import tl, triton, warps
from .rotary import check_rotary_args, rotate_halves, rotate_ref


def kv_store_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    blocks: torch.Tensor,
    offsets: torch.Tensor,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> None:
    if cos is not None:
        k = rotate_ref(k, cos, sin)
    # Advanced indices on dims 0 and 2 around a slice: the indexed view is (T, Hkv, D), matching k and v.
    k_cache[blocks, :, offsets] = k.to(k_cache.dtype)
    v_cache[blocks, :, offsets] = v.to(v_cache.dtype)


@triton.jit
def _kv_store_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, blocks_ptr, offsets_ptr, cos_ptr, sin_ptr,
    stride_k_t, stride_k_h, stride_v_t, stride_v_h,
    stride_kc_n, stride_kc_h, stride_kc_s, stride_vc_n, stride_vc_h, stride_vc_s,
    stride_cos_t, stride_sin_t,
    Hkv, N_blocks, PAGE,
    D: tl.constexpr, ROTATE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    blk = tl.load(blocks_ptr + t).to(tl.int64)
    pos = tl.load(offsets_ptr + t).to(tl.int64)
    inside = (blk >= 0) & (blk < N_blocks) & (pos >= 0) & (pos < PAGE)
    h_end = tl.where(inside, Hkv, 0)  # no head is written for an out-of-range target
    heads = tl.arange(0, BLOCK_H)[:, None].to(tl.int64)  # (BLOCK_H, 1)
    cols = tl.arange(0, BLOCK_D)[None, :]  # (1, BLOCK_D)
    k_src = k_ptr + t * stride_k_t + heads * stride_k_h + cols
    k_dst = k_cache_ptr + blk * stride_kc_n + heads * stride_kc_h + pos * stride_kc_s + cols
    v_src = v_ptr + t * stride_v_t + heads * stride_v_h + cols
    v_dst = v_cache_ptr + blk * stride_vc_n + heads * stride_vc_h + pos * stride_vc_s + cols
    kc_dtype = k_cache_ptr.dtype.element_ty
    vc_dtype = v_cache_ptr.dtype.element_ty
    if ROTATE:  # BLOCK_D spans D/2: the two halves of rotate-half
        HALF: tl.constexpr = D // 2
        mask = (heads < h_end) & (cols < HALF)
        cmask = cols < HALF
        c1 = tl.load(cos_ptr + t * stride_cos_t + cols, mask=cmask, other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + t * stride_cos_t + HALF + cols, mask=cmask, other=0.0).to(tl.float32)
        s1 = tl.load(sin_ptr + t * stride_sin_t + cols, mask=cmask, other=0.0).to(tl.float32)
        s2 = tl.load(sin_ptr + t * stride_sin_t + HALF + cols, mask=cmask, other=0.0).to(tl.float32)
        x1 = tl.load(k_src, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(k_src + HALF, mask=mask, other=0.0).to(tl.float32)
        o1, o2 = rotate_halves(x1, x2, c1, c2, s1, s2)
        tl.store(k_dst, o1.to(k_ptr.dtype.element_ty).to(kc_dtype), mask=mask)
        tl.store(k_dst + HALF, o2.to(k_ptr.dtype.element_ty).to(kc_dtype), mask=mask)
        tl.store(v_dst, tl.load(v_src, mask=mask).to(vc_dtype), mask=mask)
        tl.store(v_dst + HALF, tl.load(v_src + HALF, mask=mask).to(vc_dtype), mask=mask)
    else:
        mask = (heads < h_end) & (cols < D)
        tl.store(k_dst, tl.load(k_src, mask=mask).to(kc_dtype), mask=mask)
        tl.store(v_dst, tl.load(v_src, mask=mask).to(vc_dtype), mask=mask)


@torch.library.custom_op("hovle::kv_store", mutates_args=("k_cache", "v_cache"))
def _kv_store_op(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    blocks: torch.Tensor,
    offsets: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
) -> None:
    t, hkv, d = k.shape
    if t == 0:
        return
    rotate = cos is not None
    cos_t, sin_t = (cos, sin) if rotate else (k, k)  # unread without rotation
    block_d = triton.next_power_of_2(d // 2 if rotate else d)
    _kv_store_kernel[(t,)](
        k, v, k_cache, v_cache, blocks, offsets, cos_t, sin_t,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        cos_t.stride(0), sin_t.stride(0),
        hkv, k_cache.shape[0], k_cache.shape[2],
        D=d, ROTATE=rotate, BLOCK_H=triton.next_power_of_2(hkv), BLOCK_D=block_d,
        num_warps=warps(hkv * d), enable_fp_fusion=False,
    )  # fmt: skip


@_kv_store_op.register_fake
def _(k, v, k_cache, v_cache, blocks, offsets, cos, sin):
    return None


def _check(k, v, k_cache, v_cache, blocks, offsets, cos, sin) -> None:
    check_rotary_args("k", k, cos, sin)
    check_rotary_args("v", v, None, None)
    require(v.shape == k.shape, f"v must have k's shape {tuple(k.shape)}; got {tuple(v.shape)}")
    t, hkv, d = k.shape
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        ok = c.dim() == 4 and c.shape[1] == hkv and c.shape[3] == d and c.stride(-1) == 1
        require(
            ok,
            f"{name} must be (N_blocks, Hkv={hkv}, P, D={d}) with a contiguous last dim; got shape "
            f"{tuple(c.shape)}, strides {c.stride()}",
        )
        require(c.dtype in FLOATS, f"{name} must be fp16, bf16 or fp32; got {c.dtype}", TypeError)
    require(
        v_cache.shape == k_cache.shape,
        f"v_cache must have k_cache's shape {tuple(k_cache.shape)}; got {tuple(v_cache.shape)}",
    )
    check_index("blocks", blocks, (t,))
    check_index("offsets", offsets, (t,))
    check_same_device("k", k, v=v, k_cache=k_cache, v_cache=v_cache, blocks=blocks, offsets=offsets)


def kv_store(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    blocks: torch.Tensor,
    offsets: torch.Tensor,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> None:
    """Writes k (rotated when cos/sin are given) and v into the caches in place (Triton), bit-exact with `kv_store_ref`.

    k, v: (T, Hkv, D) fp16/bf16/fp32, last dim contiguous (strided views are fine); k_cache, v_cache:
    (N_blocks, Hkv, P, D) fp16/bf16/fp32, last dim contiguous; blocks, offsets: (T,) int32/int64 on the same
    device (page and position in the page of each token); cos, sin: None or (T, D) float tables. Returns None.
    """
    _check(k, v, k_cache, v_cache, blocks, offsets, cos, sin)
    _kv_store_op(k, v, k_cache, v_cache, blocks, offsets, cos, sin)
