"""The "torch" backend: attention and sampling composed from PyTorch ops (the engine's CPU path).

Same contracts as the Triton launchers (hovle/kernels/attention.py, decode_attention.py, sample.py). The decode-step ops
(`decode_attention_torch`, `sample_torch`) never read device data on the host, so the decode step they serve can
be captured in a CUDA graph; `max_seq_len` (a host int) bounds how many keys are gathered. Keys past each
sequence's length are zeroed before the product, not only masked, so whatever the cache holds there (a NaN from a
fresh allocation, an earlier sequence's keys) cannot leak into the result (0 * NaN would).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._paged import batch_kv, sequence_kv
from .attention import sequences
from .rotary import rotate_ref

_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA's enable_gqa


def sdpa_gqa(q, k, v, mask=None, causal=False, scale=None) -> torch.Tensor:
    """scaled_dot_product_attention with grouped kv heads on every torch version: (.., Hq, n, D), (.., Hkv, L, D)."""
    rep = q.shape[-3] // k.shape[-3]
    if _HAS_GQA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True)
    k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)


def attention_torch(
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
    """attention_ref's contract through torch's fused SDPA, one sequence at a time (reads lengths on the host)."""
    if cos is not None:
        q = rotate_ref(q, cos, sin)
    out = torch.empty_like(q)
    for b, start, end, prefix in sequences(cu_seqlens, prefix_lens):
        n = end - start
        k = sequence_kv(k_cache, block_tables[b], prefix + n)[None]  # (1, Hkv, L, D): this sequence's keys only
        v = sequence_kv(v_cache, block_tables[b], prefix + n)[None]
        qb = q[start:end].transpose(0, 1)[None]  # (n, Hq, D) -> (1, Hq, n, D)
        mask = None
        if prefix:  # bottom-right aligned causal mask: query i sits at position prefix + i
            keys = torch.arange(prefix + n, device=q.device)
            mask = keys[None, :] <= (prefix + torch.arange(n, device=q.device))[:, None]  # (n, L)
        o = sdpa_gqa(qb.to(k.dtype), k, v, mask, causal=mask is None, scale=scale)
        out[start:end] = o[0].transpose(0, 1)  # (1, Hq, n, D) -> (n, Hq, D)
    return out


def decode_attention_torch(
    q, k_cache, v_cache, seq_lens, block_tables, scale=None, cos=None, sin=None, max_seq_len=None
) -> torch.Tensor:
    """decode_attention_ref's contract, batched and sync-free. max_seq_len: host bound on seq_lens (default: the
    table's capacity); every row gathers that many keys, the ones past its own length zeroed and masked."""
    if cos is not None:
        q = rotate_ref(q, cos, sin)
    capacity = block_tables.shape[1] * k_cache.shape[2]
    length = capacity if max_seq_len is None else min(max_seq_len, capacity)
    k, v = batch_kv(k_cache, block_tables, length), batch_kv(v_cache, block_tables, length)  # (B, Hkv, L, D)
    valid = torch.arange(k.shape[2], device=q.device)[None, :] < seq_lens[:, None]  # (B, L)
    k = torch.where(valid[:, None, :, None], k, 0)
    v = torch.where(valid[:, None, :, None], v, 0)
    o = sdpa_gqa(q.unsqueeze(2), k, v, valid[:, None, None, :], scale=scale)  # (B, Hq, 1, D)
    return o.squeeze(2)  # (B, Hq, 1, D) -> (B, Hq, D)


def sample_torch(logits, temperature, top_k, top_p, uniform) -> torch.Tensor:
    """`sample_ref`'s semantics as batched torch ops with per-row parameters on the device: no host sync."""
    v = logits.shape[-1]
    greedy = temperature <= 0
    t = torch.where(greedy, torch.ones_like(temperature), temperature).float()[:, None]  # (B, 1)
    values, ids = torch.sort(logits.float() / t, dim=-1, descending=True, stable=True)  # (B, V)
    k = top_k[:, None]  # (B, 1)
    cut_k = (k > 0) & (k < v) & (torch.arange(v, device=logits.device)[None, :] >= k)
    probs = torch.softmax(values.masked_fill(cut_k, float("-inf")), dim=-1)
    p = top_p.float()[:, None]  # (B, 1)
    before = torch.cumsum(probs, dim=-1) - probs
    kept = torch.where(before >= p, torch.zeros_like(probs), probs)
    probs = torch.where(p < 1.0, kept / kept.sum(-1, keepdim=True), probs)
    cdf = torch.cumsum(probs.double(), dim=-1)  # (B, V)
    target = uniform.double()[:, None] * cdf[:, -1:]  # (B, 1)
    idx = torch.searchsorted(cdf, target, right=True).clamp_max(v - 1)  # (B, 1)
    return torch.where(greedy, torch.argmax(logits, dim=-1), ids.gather(1, idx)[:, 0])
