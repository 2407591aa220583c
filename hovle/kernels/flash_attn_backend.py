"""Attention through the optional flash-attn package (FlashAttention-2), used only when it imports.

Same contracts as hovle/kernels/attention.py and hovle/kernels/decode_attention.py, on the paged cache. Our pages
(N_blocks, Hkv, P, D) are handed to `flash_attn_with_kvcache` as their transposed view (N_blocks, P, Hkv, D): no
copy, the last dim stays contiguous and the other strides are passed as they are; `block_table` maps each sequence
to its pages and `cache_seqlens` says how many keys it attends to. flash-attn 2 needs P to be a multiple of 256
(the engine picks that page size for this backend). q is rotated first (flash-attn rotates only together with new
k/v, and our keys are already stored rotated). Decode: one call for the batch (one query each). Prefill: one call
per sequence (queries of different lengths), causal aligned bottom-right, so query i of a sequence with a cached
prefix sees keys 0 .. prefix + i. Prefill reads cu_seqlens on the host, like the references; decode does not.
"""

from __future__ import annotations

import importlib

import torch

from . import attention as _attention
from ._checks import require
from ._paged import check_decode_args, check_prefill_args
from ._triton import triton_usable
from .rotary import rotate_ref

PAGE_MULTIPLE = 256  # flash-attn 2's paged KV needs page_block_size % 256 == 0


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


def _pages(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    require(
        k_cache.shape[2] % PAGE_MULTIPLE == 0,
        f"flash-attn needs pages of a multiple of {PAGE_MULTIPLE} "
        f"positions, the cache has P={k_cache.shape[2]} (k_cache {tuple(k_cache.shape)})",
    )
    return k_cache.transpose(1, 2), v_cache.transpose(1, 2)  # (N, Hkv, P, D) -> (N, P, Hkv, D), views


def decode_attention_flash(
    q, k_cache, v_cache, seq_lens, block_tables, scale=None, cos=None, sin=None, max_seq_len=None
):
    """decode_attention's contract. q: (B, Hq, D) -> (B, Hq, D)."""
    check_decode_args(q, k_cache, v_cache, seq_lens, block_tables, scale, cos, sin, max_seq_len)
    k_pages, v_pages = _pages(k_cache, v_cache)
    out = flash_attn_module().flash_attn_with_kvcache(
        _rotate(q, cos, sin).unsqueeze(1),  # (B, Hq, D) -> (B, 1, Hq, D)
        k_pages,
        v_pages,
        cache_seqlens=seq_lens.to(torch.int32),
        block_table=block_tables.to(torch.int32),
        softmax_scale=scale,
        causal=True,
    )
    return out.squeeze(1)  # (B, 1, Hq, D) -> (B, Hq, D)


def attention_flash(
    q,
    k_cache,
    v_cache,
    cu_seqlens,
    prefix_lens,
    block_tables,
    scale=None,
    cos=None,
    sin=None,
    max_seqlen=None,
    new_kv=None,
):
    """attention's contract. q: (T, Hq, D) packed -> (T, Hq, D)."""
    check_prefill_args(q, k_cache, v_cache, cu_seqlens, prefix_lens, block_tables, cos, sin, max_seqlen)
    fa, (k_pages, v_pages) = flash_attn_module(), _pages(k_cache, v_cache)
    q = _rotate(q, cos, sin)
    out = torch.empty_like(q)
    tables = block_tables.to(torch.int32)
    for b, start, end, prefix in _attention.sequences(cu_seqlens, prefix_lens):
        lens = torch.tensor([prefix + end - start], dtype=torch.int32, device=q.device)
        o = fa.flash_attn_with_kvcache(
            q[start:end].unsqueeze(0),  # (n, Hq, D) -> (1, n, Hq, D)
            k_pages,
            v_pages,
            cache_seqlens=lens,
            block_table=tables[b : b + 1],
            softmax_scale=scale,
            causal=True,
        )
        out[start:end] = o[0]
    return out
