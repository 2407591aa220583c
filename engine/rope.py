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

from .config import RopeConfig


def inv_freq_for(theta: float, head_dim: int) -> torch.Tensor:
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta**exponents)


class Rope:
    """cos/sin for arbitrary per-token positions and kv lengths of one stack."""

    def __init__(self, cfg: RopeConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.inv_freq = inv_freq_for(cfg.theta, cfg.head_dim).to(self.device)

    def _dynamic_inv_freq(self, kv_len: int) -> torch.Tensor:
        c = self.cfg
        base = c.theta * ((c.factor * kv_len / c.max_position_embeddings) - (c.factor - 1)) ** (
            c.head_dim / (c.head_dim - 2)
        )
        return inv_freq_for(base, c.head_dim).to(self.device)

    def cos_sin(
        self, positions: torch.Tensor, kv_lens: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions, kv_lens: (T,) int64 (kv_lens = kv length of the forward each token belongs to).

        Returns cos, sin: (T, D) in `dtype`.
        """
        pos = positions.to(self.device, torch.float32)
        if self.cfg.scaling == "linear":
            pos = pos / self.cfg.factor
        freqs = pos[:, None] * self.inv_freq[None, :]  # (T, D/2)
        if self.cfg.scaling == "dynamic":
            over = kv_lens > self.cfg.max_position_embeddings
            if bool(over.any()):
                for n in torch.unique(kv_lens[over]).tolist():
                    rows = kv_lens == n
                    freqs[rows] = pos[rows, None] * self._dynamic_inv_freq(int(n))[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)  # (T, D): rotate-half pairs i with i + D/2
        return angles.cos().to(dtype), angles.sin().to(dtype)
