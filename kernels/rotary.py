"""Rotate-half rotary position embedding (GPT-NeoX / InternLM2 style, not interleaved).

    q' = q * cos + rotate_half(q) * sin,   rotate_half(x) = concat(-x[D/2:], x[:D/2])

q: (T, Hq, D), k: (T, Hkv, D); cos, sin: (T, D) per-token tables (concat(freqs, freqs)), already in the
activation dtype as the reference casts them. Returns new (q', k'). The attention, decode-attention and KV-store
ops take the same cos/sin as optional arguments and rotate on the fly, so the engine needs no separate pass.
"""

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One tensor (T, H, D) rotated by per-token tables (T, D); fp32 math, cast back."""
    c, s = cos.float()[:, None, :], sin.float()[:, None, :]  # (T, 1, D): broadcast over heads
    xf = x.float()
    return (xf * c + _rotate_half(xf) * s).to(x.dtype)


def rotary_ref(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return rotate_ref(q, cos, sin), rotate_ref(k, cos, sin)
