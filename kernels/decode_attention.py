"""Attention of one new query per sequence over its KV cache (the decode step).

q: (B, Hq, D); k_cache, v_cache: (N_slots, Hkv, S_max, D); seq_lens, slots: (B,) int. Sequence b attends to
cache[slots[b], :, 0 : seq_lens[b]] (no causal mask needed: every cached key is in its past). Query head h uses
kv head h // (Hq/Hkv). Softmax in fp32.
With cos, sin given (rows matching q's), q is rotated on load (rotate-half RoPE). Returns (B, Hq, D) in q's dtype.
"""

import math

import torch
import torch.nn.functional as F

from .rotary import rotate_ref


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    slots: torch.Tensor,
    scale: float | None = None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> torch.Tensor:
    if cos is not None:
        q = rotate_ref(q, cos, sin)
    b, hq, d = q.shape
    hkv = k_cache.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    max_len = int(seq_lens.max())
    k = k_cache[slots, :, :max_len].float()  # (B, Hkv, L, D)
    v = v_cache[slots, :, :max_len].float()
    qg = q.float().view(b, hkv, hq // hkv, d)  # (B, Hq, D) -> (B, Hkv, rep, D): heads of one kv group
    scores = torch.matmul(qg, k.transpose(-1, -2)) * scale  # (B, Hkv, rep, L)
    beyond = torch.arange(max_len, device=q.device)[None, :] >= seq_lens[:, None]  # (B, L)
    scores = scores.masked_fill(beyond[:, None, None, :], float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, Hkv, rep, D)
    return out.reshape(b, hq, d).to(q.dtype)  # (B, Hkv, rep, D) -> (B, Hq, D)


def decode_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    slots: torch.Tensor,
    scale: float | None = None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> torch.Tensor:
    if cos is not None:
        q = rotate_ref(q, cos, sin)
    """Same contract as decode_attention_ref, through torch's fused scaled_dot_product_attention."""
    b = q.shape[0]
    lens = seq_lens.tolist()
    max_len = max(lens)
    slot_list = slots.tolist()
    if slot_list == list(range(slot_list[0], slot_list[0] + b)):
        k = k_cache[slot_list[0] : slot_list[0] + b, :, :max_len]  # a view: no gather copy
        v = v_cache[slot_list[0] : slot_list[0] + b, :, :max_len]
    else:
        k, v = k_cache[slots, :, :max_len], v_cache[slots, :, :max_len]  # (B, Hkv, L, D)
    mask = None
    if min(lens) != max_len:
        mask = (torch.arange(max_len, device=q.device)[None, :] < seq_lens[:, None])[:, None, None, :]  # (B,1,1,L)
    o = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return o.squeeze(2)  # (B, Hq, 1, D) -> (B, Hq, D)
