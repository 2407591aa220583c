"""Per-token cos/sin tables for rotate-half RoPE, with InternLM2's linear and dynamic-NTK scaling.

InternLM2 numerics: inv_freq = 1 / theta^(2i/D) in fp32; angles = fp32(position) * inv_freq; cos/sin in fp32,
cast to the activation dtype. Linear scaling divides the position by the factor. Dynamic NTK: when a forward
needs a kv length n > max_position_embeddings, theta becomes theta * (factor*n/max_pos - (factor-1))^(D/(D-2))
for the tokens of that forward; keys already cached keep the rotation they were stored with. The reference keeps
the rescaled base on the module for later (shorter) requests too; we compute it per sequence instead, which is
identical within a sequence and does not leak one request's length into the next.
"""

from __future__ import annotations

import torch

from ..loaders.config import RopeConfig


def _exponents(head_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """2i / D for i < D/2, in fp32 as the reference computes them."""
    return torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim


def inv_freq_for(theta: float, head_dim: int) -> torch.Tensor:
    return 1.0 / (theta ** _exponents(head_dim))


class Rope:
    """cos/sin for arbitrary per-token positions and kv lengths of one stack."""

    def __init__(self, cfg: RopeConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.inv_freq = inv_freq_for(cfg.theta, cfg.head_dim).to(self.device)

    def cos_sin(
        self, positions: torch.Tensor, kv_lens: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions, kv_lens: (T,) int64 (kv_lens = kv length of the forward each token belongs to).

        Returns cos, sin: (T, D) in `dtype` on the rope's device. Only device ops, no host read, so the same code
        serves prefill and the CUDA-graph-captured decode step. The dynamic-NTK base is computed per token in
        float64 and rounded to fp32 before the fp32 power, as the reference turns a Python float base into an fp32
        power.
        """
        c = self.cfg
        pos = positions.to(self.device, torch.float32)
        if c.scaling == "linear":
            pos = pos / c.factor
        inv = self.inv_freq[None, :]  # (1, D/2)
        if c.scaling == "dynamic":
            kv_lens = kv_lens.to(self.device)
            n = kv_lens.to(torch.float64)
            base = c.theta * ((c.factor * n / c.max_position_embeddings) - (c.factor - 1)) ** (
                c.head_dim / (c.head_dim - 2)
            )
            scaled = 1.0 / (base.to(torch.float32)[:, None] ** _exponents(c.head_dim, self.device)[None, :])
            inv = torch.where((kv_lens > c.max_position_embeddings)[:, None], scaled, inv)  # (T, D/2)
        freqs = pos[:, None] * inv  # (T, D/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (T, D): rotate-half pairs i with i + D/2
        return angles.cos().to(dtype), angles.sin().to(dtype)
