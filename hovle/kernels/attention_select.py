"""The Triton backend's prefill attention: our FlashAttention-2 kernel, or a library kernel where it is faster.

For a prompt of one sequence starting at position 0 (the time-to-first-token case: the whole prompt in one
forward), the keys are exactly this forward's, so torch's SDPA (cuDNN or FlashAttention backend) and the flash-attn
package can run on them directly: q and k are rotated by the Triton rotary kernel (the rounding the fused kernels
use), then causal attention with grouped kv heads. Which one is fastest depends on the length and the GPU (cuDNN
led at 13k tokens, ours trailed at 1k on the H200 of 2026-11-30): `attention_auto` measures the candidates once per
length bucket (hovle/kernels/autoselect.py) and keeps the fastest. Anything else (several sequences, a cached prefix,
chunks) runs our kernel, which reads keys through the page tables.

Same contract as `attention`, plus `new_kv`: this forward's (k, v), (T, Hkv, D) each, k not yet rotated, given by
the caller exactly when one sequence starts at position 0.
"""

from __future__ import annotations

import contextlib

import torch

from ._triton import triton, triton_usable
from .attention import attention
from .flash_attn_backend import flash_attn_module
from .rotary import rotary_ref
from .torch_backend import sdpa_gqa


def _rotated(q, k, cos, sin):
    if cos is None:
        return q, k
    if triton_usable(q.device.type):
        from .rotary import rotary

        return rotary(q, k, cos, sin)
    return rotary_ref(q, k, cos, sin)


def _ours(q, k, v, scale, cos, sin, paged):
    return attention(*paged)


def _sdpa(backend: str | None):
    def run(q, k, v, scale, cos, sin, paged):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        qr, kr = _rotated(q, k, cos, sin)
        qb, kb, vb = (t.transpose(0, 1)[None] for t in (qr, kr, v))  # (T, H, D) -> (1, H, T, D) views
        backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
        with sdpa_kernel(backends[backend]) if backend else contextlib.nullcontext():
            o = sdpa_gqa(qb, kb, vb, causal=True, scale=scale)
        return o[0].transpose(0, 1)  # (1, Hq, T, D) -> (T, Hq, D)

    return run


def _flash_attn(q, k, v, scale, cos, sin, paged):
    from flash_attn import flash_attn_func

    qr, kr = _rotated(q, k, cos, sin)
    return flash_attn_func(qr[None], kr[None], v[None], softmax_scale=scale, causal=True)[0]


_CHOICE = None


def _candidates() -> dict:
    cands = {"triton": _ours, "sdpa-cudnn": _sdpa("cudnn"), "sdpa-flash": _sdpa("flash"), "sdpa": _sdpa(None)}
    if flash_attn_module() is not None:
        cands["flash-attn"] = _flash_attn
    return cands


def attention_auto(
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
) -> torch.Tensor:
    """attention's contract; with new_kv, the fastest of ours and the library kernels for this length bucket."""
    global _CHOICE
    paged = (q, k_cache, v_cache, cu_seqlens, prefix_lens, block_tables, scale, cos, sin, max_seqlen)
    if new_kv is None:
        return attention(*paged)
    if _CHOICE is None:
        from .autoselect import Choice

        _CHOICE = Choice("prefill_attention", _candidates())
    k, v = new_kv
    key = (triton.next_power_of_2(q.shape[0]), q.shape[1], k.shape[1], q.shape[2], q.dtype)
    return _CHOICE(key, q, k, v, scale, cos, sin, paged)
