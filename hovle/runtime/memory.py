"""Fresh device allocations that may be read before they are written (KV pages, per-row decode state).

`fresh` is torch.empty, except under HOVLE_POISON=1 (set by the tests), where floating tensors start as NaN and
integer ones as their dtype's largest value: a read of memory nobody wrote then shows up as a NaN in the output or
an out-of-range index, never as a plausible token.
"""

from __future__ import annotations

import os

import torch


def poisoning() -> bool:
    return os.environ.get("HOVLE_POISON", "0") == "1"


def fresh(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if not poisoning():
        return out
    if out.is_floating_point():
        return out.fill_(float("nan"))
    return out.fill_(True if dtype == torch.bool else torch.iinfo(dtype).max)
