"""Bidirectional (non-causal) attention over a padded batch: encoders (CLIP ViT, DeBERTa) and cross-attention.

    o[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, g] + bias[b, h, i, j], over j with key_mask[b, j])
                 * v[b, j, g]                    g = h // (Hq / Hkv) (grouped kv heads)

q: (B, Lq, Hq, D); k, v: (B, Lk, Hkv, D), Lq and Lk independent (cross-attention); any strides with a contiguous
last dim (views of a fused projection's output are fine). key_mask: None or (B, Lk) bool, True where a key may be
attended to (padding is False). bias: None or a float tensor broadcastable to (B, Hq, Lq, Lk) (DeBERTa's relative
position terms), added after the scale. scale: default 1/sqrt(D). A query row whose keys are all masked gets
zeros. Returns (B, Lq, Hq, D) contiguous in q's dtype; softmax statistics in fp32.
"""

from __future__ import annotations

import torch


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
