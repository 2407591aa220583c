"""Attention through the optional flash-attn package (FlashAttention-2), used only when it imports.

Same contracts as kernels/attention.py and kernels/decode_attention.py. Our cache (N_slots, Hkv, S_max, D) is handed
to `flash_attn_with_kvcache` as its transposed view (N_slots, S_max, Hkv, D): no copy, the last dim stays
contiguous and the other strides are passed as they are; `cache_batch_idx` selects the slots and `cache_seqlens`
says how many keys each sequence attends to. q is rotated first (flash-attn rotates only together with new k/v,
and our keys are already stored rotated). Decode: one call for the batch (one query each). Prefill: one call per
sequence (queries of different lengths), causal aligned bottom-right, so query i of a sequence with a cached prefix
sees keys 0 .. prefix + i. Prefill reads cu_seqlens on the host, like the references; decode does not.
"""

from __future__ import annotations

import importlib

import torch

from ._triton import triton_usable
from .rotary import rotate_ref


def flash_attn_module():
    """The flash_attn module, or None when the package is not installed."""
    try:
        return importlib.import_module("flash_attn")
    except ImportError:
        return None


def _rotate(x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
    if cos is None:
        return x
    if triton_usable(x.device.type):
        from .rotary import rotate

        return rotate(x, cos, sin)
    return rotate_ref(x, cos, sin)


def decode_attention_flash(q, k_cache, v_cache, seq_lens, slots, scale=None, cos=None, sin=None, max_seq_len=None):
    """decode_attention's contract. q: (B, Hq, D) -> (B, Hq, D)."""
    fa = flash_attn_module()
    q = _rotate(q, cos, sin)
    out = fa.flash_attn_with_kvcache(
        q.unsqueeze(1),  # (B, Hq, D) -> (B, 1, Hq, D)
        k_cache.transpose(1, 2),  # (N, Hkv, S, D) -> (N, S, Hkv, D), a view
        v_cache.transpose(1, 2),
        cache_seqlens=seq_lens.to(torch.int32),
        cache_batch_idx=slots.to(torch.int32),
        softmax_scale=scale,
        causal=True,
    )
    return out.squeeze(1)  # (B, 1, Hq, D) -> (B, Hq, D)


def attention_flash(
    q, k_cache, v_cache, cu_seqlens, prefix_lens, slots, scale=None, cos=None, sin=None, max_seqlen=None
):
    """attention's contract. q: (T, Hq, D) packed -> (T, Hq, D)."""
    fa = flash_attn_module()
    q = _rotate(q, cos, sin)
    out = torch.empty_like(q)
    k_t, v_t = k_cache.transpose(1, 2), v_cache.transpose(1, 2)  # (N, S, Hkv, D) views
    bounds, prefixes = cu_seqlens.tolist(), prefix_lens.tolist()
    for b in range(len(prefixes)):
        start, end = bounds[b], bounds[b + 1]
        lens = torch.tensor([prefixes[b] + end - start], dtype=torch.int32, device=q.device)
        o = fa.flash_attn_with_kvcache(
            q[start:end].unsqueeze(0),  # (n, Hq, D) -> (1, n, Hq, D)
            k_t, v_t, cache_seqlens=lens, cache_batch_idx=slots[b : b + 1].to(torch.int32),
            softmax_scale=scale, causal=True,
        )  # fmt: skip
        out[start:end] = o[0]
    return out
