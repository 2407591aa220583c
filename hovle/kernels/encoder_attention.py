"""Bidirectional (non-causal) attention over a padded batch: encoders (CLIP ViT, DeBERTa) and cross-attention.

    o[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, g] + bias[b, h, i, j], over j with key_mask[b, j])
                 * v[b, j, g]                    g = h // (Hq / Hkv) (grouped kv heads)

q: (B, Lq, Hq, D); k, v: (B, Lk, Hkv, D), Lq and Lk independent (cross-attention); any strides with a contiguous
last dim (views of a fused projection's output are fine). key_mask: None or (B, Lk) bool, True where a key may be
attended to (padding is False). bias: None or a float tensor broadcastable to (B, Hq, Lq, Lk) (DeBERTa's relative
position terms), added after the scale. scale: default 1/sqrt(D). A query row whose keys are all masked gets
zeros. Returns (B, Lq, Hq, D) contiguous in q's dtype; softmax statistics in fp32.

Kernel: FlashAttention-2 (Dao, 2023) forward without the causal mask. One program per (BLOCK_M query rows, batch,
head) keeps its q tile in registers and streams BLOCK_N-key tiles of K and V with an online softmax in fp32
(running max and sum, exp2 with scale * log2(e) folded in). Full key tiles load unmasked when D is a power of 2;
only the tail tile checks Lk. The key mask is read per key tile; the bias is read with its own four strides, so a
broadcast (stride 0) bias, e.g. (1, H, L, L) or (L, L), is never materialised. A row that has seen only masked keys
keeps m = -inf and shifts by 0 instead (no -inf - -inf); a row whose keys are all masked ends with l = 0 and is
written as zeros. D is padded to a power of 2 (at least 16, what tl.dot needs) with masks (80 -> 128).
"""

from __future__ import annotations

import torch

from ._checks import FLOATS, require
from ._triton import fitting_configs, tl, triton, triton_usable, tuning_configs


def _masked_scores(q, k, key_mask, bias, scale) -> torch.Tensor:
    """fp32 (B, Hq, Lq, Lk) scores with -inf at masked keys."""
    rep = q.shape[2] // k.shape[2]
    qf = q.float().permute(0, 2, 1, 3)  # (B, Lq, Hq, D) -> (B, Hq, Lq, D)
    kf = k.float().permute(0, 2, 1, 3).repeat_interleave(rep, dim=1)  # (B, Lk, Hkv, D) -> (B, Hq, Lk, D)
    s = (qf @ kf.transpose(-1, -2)) * scale  # (B, Hq, Lq, Lk)
    if bias is not None:
        s = s + bias.float()
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return s


def encoder_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = _masked_scores(q, k, key_mask, bias, scale)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row of -inf only (every key masked) gives zeros
    rep = q.shape[2] // k.shape[2]
    vf = v.float().permute(0, 2, 1, 3).repeat_interleave(rep, dim=1)  # (B, Lk, Hkv, D) -> (B, Hq, Lk, D)
    o = p @ vf  # (B, Hq, Lq, D)
    return o.permute(0, 2, 1, 3).contiguous().to(q.dtype)  # (B, Hq, Lq, D) -> (B, Lq, Hq, D)


def _tile_configs() -> list:
    """The GPU tuning list, (BLOCK_M, BLOCK_N, num_warps, num_stages), the default (what the interpreter runs) first."""
    shapes = [(64, 64, 4, 2), (64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3)]
    shapes += [(128, 128, 8, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


def _prune(configs: list, named_args: dict, **kwargs) -> list:
    """Wide heads (D > 128) keep to score tiles of at most 64 x 64: larger ones with 256 columns spill registers."""
    small = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
    return small if kwargs["BLOCK_D"] > 128 and small else configs


def _smem(config, args: dict, consts: dict) -> int:
    """Shared memory: the q tile, and num_stages of pipelined K and V tiles."""
    m, n, d = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], consts["BLOCK_D"]
    return (m * d + config.num_stages * 2 * n * d) * args["k_ptr"].element_size()


@triton.jit
def _attend_tiles(acc, l_i, m_i, q, k_base, v_base, mask_base, bias_base, row_ok, lo, hi, Lk, stride_k_l, stride_v_l,
                  stride_mask_l, stride_bias_l, qk_scale, HEAD_DIM: tl.constexpr, BOUNDED: tl.constexpr,
                  HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr):  # fmt: skip
    """Online softmax over key tiles [lo, hi), scores in log2 units; BOUNDED masks keys at and past Lk (the tail
    tile only). bias_base: (BLOCK_M, 1) pointers to the query rows' bias, read where row_ok (rows < Lq)."""
    offs_n = tl.arange(0, BLOCK_N)
    d_ok = (tl.arange(0, BLOCK_D) < HEAD_DIM)[None, :]
    for start_n in tl.range(lo, hi, BLOCK_N):
        keys = start_n + offs_n
        k_ptrs = k_base + keys.to(tl.int64)[:, None] * stride_k_l
        v_ptrs = v_base + keys.to(tl.int64)[:, None] * stride_v_l
        if BOUNDED or BLOCK_D != HEAD_DIM:
            kv_mask = (keys[:, None] < Lk) & d_ok
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        else:  # interior tiles at a power-of-2 head dim: plain loads
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if HAS_BIAS:
            b_ptrs = bias_base + keys.to(tl.int64)[None, :] * stride_bias_l
            b_ok = row_ok[:, None] & (keys < Lk)[None, :]  # rows past Lq would read past the bias
            s += tl.load(b_ptrs, mask=b_ok, other=0.0).to(tl.float32) * 1.4426950408889634
        if HAS_MASK:
            visible = tl.load(mask_base + keys.to(tl.int64) * stride_mask_l, mask=keys < Lk, other=0) != 0
            s = tl.where(visible[None, :], s, float("-inf"))
        elif BOUNDED:
            s = tl.where((keys < Lk)[None, :], s, float("-inf"))
        # A row may have seen only masked keys so far (m = -inf): shift by 0 then, so exp2(-inf) = 0, never NaN.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(
    configs=tuning_configs(_tile_configs()),
    key=["HEAD_DIM", "GROUP", "HAS_MASK", "HAS_BIAS", "lq_bucket", "lk_bucket"],
    prune_configs_by={"early_config_prune": fitting_configs(_smem, then=_prune)},
)
@triton.jit
def _encoder_attention_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, bias_ptr, out_ptr,
                              stride_q_b, stride_q_l, stride_q_h, stride_k_b, stride_k_l, stride_k_h,
                              stride_v_b, stride_v_l, stride_v_h, stride_mask_b, stride_mask_l,
                              stride_bias_b, stride_bias_h, stride_bias_q, stride_bias_l,
                              stride_out_b, stride_out_l, stride_out_h,
                              num_heads, Lq, Lk, lq_bucket, lk_bucket, qk_scale,
                              HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, HAS_MASK: tl.constexpr,
                              HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    b = (tl.program_id(1) // num_heads).to(tl.int64)
    h = (tl.program_id(1) % num_heads).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = offs_m.to(tl.int64)[:, None]  # (BLOCK_M, 1)
    io_mask = (offs_m < Lq)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(q_ptr + b * stride_q_b + h * stride_q_h + rows * stride_q_l + offs_d[None, :], mask=io_mask, other=0.0)
    kv_head = h // GROUP
    k_base = k_ptr + b * stride_k_b + kv_head * stride_k_h + offs_d[None, :]
    v_base = v_ptr + b * stride_v_b + kv_head * stride_v_h + offs_d[None, :]
    mask_base = mask_ptr + b * stride_mask_b
    bias_base = bias_ptr + b * stride_bias_b + h * stride_bias_h + rows * stride_bias_q
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    full_end = Lk // BLOCK_N * BLOCK_N  # tiles wholly inside [0, Lk) need no bounds mask
    # fmt: off
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_base, v_base, mask_base, bias_base, offs_m < Lq, 0, full_end, Lk,
                                  stride_k_l, stride_v_l, stride_mask_l, stride_bias_l, qk_scale, HEAD_DIM, False,
                                  HAS_MASK, HAS_BIAS, PRECISION, BLOCK_N, BLOCK_D)
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_base, v_base, mask_base, bias_base, offs_m < Lq, full_end, Lk, Lk,
                                  stride_k_l, stride_v_l, stride_mask_l, stride_bias_l, qk_scale, HEAD_DIM, True,
                                  HAS_MASK, HAS_BIAS, PRECISION, BLOCK_N, BLOCK_D)
    # fmt: on
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # every key masked: l = 0 and acc = 0, zeros as the reference
    out_ptrs = out_ptr + b * stride_out_b + h * stride_out_h + rows * stride_out_l + offs_d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=io_mask)


def encoder_attention_torch(q, k, v, key_mask=None, bias=None, scale=None) -> torch.Tensor:
    """The same contract through torch's fused scaled_dot_product_attention (the CPU path and a GPU candidate):
    the mask and the bias become one additive float mask; rows with every key masked are zeroed after."""
    from .torch_backend import sdpa_gqa

    mask = None
    if bias is not None:
        mask = bias.to(q.dtype)
    if key_mask is not None:
        pad = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~key_mask, float("-inf"))
        pad = pad[:, None, None, :]  # (B, Lk) -> (B, 1, 1, Lk)
        mask = pad if mask is None else mask + pad
    qb, kb, vb = (t.transpose(1, 2) for t in (q, k, v))  # (B, L, H, D) -> (B, H, L, D) views
    o = sdpa_gqa(qb, kb, vb, mask, scale=scale).transpose(1, 2)  # (B, Hq, Lq, D) -> (B, Lq, Hq, D)
    if key_mask is not None:
        o = o.masked_fill(~key_mask.any(dim=1)[:, None, None, None], 0.0)
    return o.contiguous()


_LOG2E = 1.4426950408889634


@torch.library.custom_op("hovle::encoder_attention", mutates_args=())
def _encoder_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    b, lq, hq, d = q.shape
    lk = k.shape[1]
    out = torch.empty((b, lq, hq, d), dtype=q.dtype, device=q.device)
    if out.numel() == 0 or lk == 0:
        return out.zero_()  # no keys: every row is fully masked
    scale = d**-0.5 if scale is None else scale
    mask = key_mask.view(torch.uint8) if key_mask is not None else q  # never read without HAS_MASK
    mask_strides = mask.stride() if key_mask is not None else (0, 0)
    full_bias = bias.expand(b, hq, lq, lk) if bias is not None else q  # broadcast dims get stride 0; no copy
    bias_strides = full_bias.stride() if bias is not None else (0, 0, 0, 0)
    grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), b * hq)  # noqa: E731
    # fmt: off
    _encoder_attention_kernel[grid](
        q, k, v, mask, full_bias, out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), *mask_strides, *bias_strides,
        out.stride(0), out.stride(1), out.stride(2),
        hq, lq, lk, min(triton.next_power_of_2(lq), 4096), min(triton.next_power_of_2(lk), 4096), scale * _LOG2E,
        HEAD_DIM=d, GROUP=hq // k.shape[2], HAS_MASK=key_mask is not None, HAS_BIAS=bias is not None,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", BLOCK_D=max(16, triton.next_power_of_2(d)),
    )
    # fmt: on
    return out


@_encoder_attention_op.register_fake
def _(q, k, v, key_mask, bias, scale):
    return q.new_empty(q.shape)


def _check(q, k, v, key_mask, bias) -> None:
    require(triton_usable(q.device.type), f"q is on {q.device}: Triton needs CUDA (or TRITON_INTERPRET=1 on CPU)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        require(
            t.dim() == 4 and t.dtype in FLOATS and (t.stride(-1) == 1 or t.shape[-1] == 1),
            f"{name} must be a 4-D (B, L, H, D) fp16/bf16/fp32 tensor with a contiguous last dim; got shape "
            f"{tuple(t.shape)}, dtype {t.dtype}, strides {t.stride()}",
        )
        require(t.device == q.device, f"{name} is on {t.device} but q is on {q.device}")
    b, lq, hq, d = q.shape
    require(k.dtype == q.dtype and v.dtype == q.dtype, f"k and v must be q's dtype {q.dtype}; got {k.dtype}, {v.dtype}")
    require(
        k.shape == v.shape and k.shape[0] == b and k.shape[3] == d,
        f"k and v must both be (B={b}, Lk, Hkv, D={d}); got k {tuple(k.shape)}, v {tuple(v.shape)}",
    )
    require(0 < d <= 256, f"head dim D of q must be in 1..256; got {d}")
    require(k.shape[2] > 0 and hq % k.shape[2] == 0, f"Hq={hq} must be a multiple of k's Hkv={k.shape[2]}")
    if key_mask is not None:
        require(
            key_mask.dtype == torch.bool and tuple(key_mask.shape) == (b, k.shape[1]),
            f"key_mask must be a bool (B, Lk) = ({b}, {k.shape[1]}) tensor; got {key_mask.dtype} "
            f"{tuple(key_mask.shape)}",
        )
        require(key_mask.device == q.device, f"key_mask is on {key_mask.device} but q is on {q.device}")
    if bias is not None:
        full = (b, hq, lq, k.shape[1])
        ok = bias.dtype in FLOATS and bias.dim() <= 4
        ok = ok and all(n in (1, m) for n, m in zip(bias.shape[::-1], full[::-1]))
        require(ok, f"bias must be a float tensor broadcastable to (B, Hq, Lq, Lk) = {full}; got {bias.dtype} "
                f"{tuple(bias.shape)}")  # fmt: skip
        require(bias.device == q.device, f"bias is on {bias.device} but q is on {q.device}")


def encoder_attention(q, k, v, key_mask=None, bias=None, scale=None) -> torch.Tensor:
    """encoder_attention_ref's contract on the Triton FlashAttention-2 kernel (no host syncs; graph capturable).

    q: (B, Lq, Hq, D) fp16/bf16/fp32; k, v: (B, Lk, Hkv, D) in q's dtype, Hq a multiple of Hkv; any strides with a
    contiguous last dim; D <= 256. key_mask: None or (B, Lk) bool, True = may be attended to. bias: None or a float
    tensor broadcastable to (B, Hq, Lq, Lk), any strides, added after the scale. scale: float, default 1/sqrt(D).
    Returns (B, Lq, Hq, D) contiguous in q's dtype; query rows whose keys are all masked are zeros.
    """
    _check(q, k, v, key_mask, bias)
    return _encoder_attention_op(q, k, v, key_mask, bias, None if scale is None else float(scale))
