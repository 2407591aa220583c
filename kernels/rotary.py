"""Rotate-half rotary position embedding (GPT-NeoX / InternLM2 style, not interleaved).

    q' = q * cos + rotate_half(q) * sin,   rotate_half(x) = concat(-x[D/2:], x[:D/2])

q: (T, Hq, D), k: (T, Hkv, D); cos, sin: (T, D) per-token tables (concat(freqs, freqs)), already in the
activation dtype as the reference casts them. Returns new (q', k').
"""

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_ref(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    c, s = cos.float()[:, None, :], sin.float()[:, None, :]  # (T, 1, D): broadcast over heads
    qf, kf = q.float(), k.float()
    q_out = qf * c + _rotate_half(qf) * s
    k_out = kf * c + _rotate_half(kf) * s
    return q_out.to(q.dtype), k_out.to(k.dtype)
