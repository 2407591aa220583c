"""Scatter one forward's keys and values into the preallocated KV cache (in place, bit-exact).

k, v: (T, Hkv, D); k_cache, v_cache: (N_slots, Hkv, S_max, D); token_slots, token_pos: (T,) int64: token t
goes to cache[token_slots[t], :, token_pos[t]].
"""

import torch

from .rotary import rotate_ref


def kv_store_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    token_slots: torch.Tensor,
    token_pos: torch.Tensor,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
) -> None:
    if cos is not None:
        k = rotate_ref(k, cos, sin)
    # Advanced indices on dims 0 and 2 around a slice: the indexed view is (T, Hkv, D), matching k and v.
    k_cache[token_slots, :, token_pos] = k.to(k_cache.dtype)
    v_cache[token_slots, :, token_pos] = v.to(v_cache.dtype)
