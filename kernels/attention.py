"""Causal grouped-query attention for prefill over the KV cache (variable lengths, packed).

Sequence b owns queries q[cu_seqlens[b]:cu_seqlens[b+1]] at cache positions prefix_lens[b] + i; they attend
causally to k_cache/v_cache[slots[b], :, 0 : prefix_lens[b] + i + 1] (its prefix, e.g. an earlier turn, and
itself). The step's keys must already be stored (kv_store) before the call.

q: (T, Hq, D); k_cache, v_cache: (N_slots, Hkv, S_max, D); cu_seqlens: (B+1,) int; prefix_lens, slots: (B,) int.
Query head h uses kv head h // (Hq/Hkv). Softmax in fp32.
With cos, sin given (rows matching q's), q is rotated on load (rotate-half RoPE). Returns (T, Hq, D) in q's dtype.
"""

import math

import torch
import torch.nn.functional as F

from .rotary import rotate_ref

_QUERY_CHUNK = 1024  # bounds the (Hq, chunk, keys) score matrix the reference materialises


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, scale: float) -> torch.Tensor:
    """q: (Hq, n, D) fp32 at absolute positions q_pos (n,); k, v: (Hq, L, D) fp32. Causal on positions."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (Hq, n, L)
    future = torch.arange(k.shape[1], device=q.device)[None, :] > q_pos[:, None]  # (n, L)
    scores = scores.masked_fill(future, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)  # (Hq, n, D)


def attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens: torch.Tensor,
    prefix_lens: torch.Tensor,
    slots: torch.Tensor,
    scale: float | None = None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> torch.Tensor:
    if cos is not None:
        q = rotate_ref(q, cos, sin)
    hq, d = q.shape[1], q.shape[2]
    rep = hq // k_cache.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q)
    bounds, prefixes, slot_list = cu_seqlens.tolist(), prefix_lens.tolist(), slots.tolist()
    for b, slot in enumerate(slot_list):
        start, end, prefix = bounds[b], bounds[b + 1], prefixes[b]
        kv_len = prefix + end - start
        k = k_cache[slot, :, :kv_len].float().repeat_interleave(rep, dim=0)  # (Hkv, L, D) -> (Hq, L, D)
        v = v_cache[slot, :, :kv_len].float().repeat_interleave(rep, dim=0)
        for c0 in range(start, end, _QUERY_CHUNK):
            c1 = min(c0 + _QUERY_CHUNK, end)
            qc = q[c0:c1].float().transpose(0, 1)  # (n, Hq, D) -> (Hq, n, D)
            q_pos = torch.arange(c0 - start, c1 - start, device=q.device) + prefix
            out[c0:c1] = _attend(qc, k, v, q_pos, scale).transpose(0, 1).to(q.dtype)  # (Hq, n, D) -> (n, Hq, D)
    return out


def attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens: torch.Tensor,
    prefix_lens: torch.Tensor,
    slots: torch.Tensor,
    scale: float | None = None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> torch.Tensor:
    if cos is not None:
        q = rotate_ref(q, cos, sin)
    """Same contract as attention_ref, through torch's fused scaled_dot_product_attention (the "torch" backend)."""
    out = torch.empty_like(q)
    bounds, prefixes, slot_list = cu_seqlens.tolist(), prefix_lens.tolist(), slots.tolist()
    for b, slot in enumerate(slot_list):
        start, end, prefix = bounds[b], bounds[b + 1], prefixes[b]
        n = end - start
        k = k_cache[slot, :, : prefix + n].unsqueeze(0)  # (1, Hkv, L, D)
        v = v_cache[slot, :, : prefix + n].unsqueeze(0)
        qb = q[start:end].transpose(0, 1).unsqueeze(0)  # (n, Hq, D) -> (1, Hq, n, D)
        mask = None
        if prefix:
            # Bottom-right aligned causal mask: query i sits at position prefix + i.
            keys = torch.arange(prefix + n, device=q.device)
            mask = keys[None, :] <= (prefix + torch.arange(n, device=q.device))[:, None]  # (n, L)
        o = F.scaled_dot_product_attention(
            qb.to(k.dtype), k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
        )
        out[start:end] = o[0].transpose(0, 1)  # (1, Hq, n, D) -> (n, Hq, D)
    return out
