"""Preallocated KV cache of one decoder stack, shared by a batch of sequences (one slot each).

k, v: (L, N_slots, Hkv, S_max, D) allocated once; `lengths[slot]` counts the tokens stored for that slot. The
engine keeps two of these (embedding module and LLM), since every generated token passes through both stacks.
"""

from __future__ import annotations

import torch

from .errors import InputError


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        capacity: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (num_layers, num_slots, num_kv_heads, capacity, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.lengths = [0] * num_slots

    @property
    def num_slots(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def fits(self, num_slots: int, capacity: int, dtype: torch.dtype) -> bool:
        return self.num_slots >= num_slots and self.capacity >= capacity and self.k.dtype == dtype

    def reset(self) -> None:
        self.lengths = [0] * self.num_slots

    def reserve(self, slot: int, new_tokens: int) -> int:
        """Claims room for `new_tokens` more tokens of `slot`; returns the old length (the prefix)."""
        old = self.lengths[slot]
        if old + new_tokens > self.capacity:
            raise InputError(
                f"KV cache slot {slot}: {old} + {new_tokens} tokens exceed its capacity of {self.capacity}"
            )
        self.lengths[slot] = old + new_tokens
        return old
