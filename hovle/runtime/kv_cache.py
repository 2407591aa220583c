"""The paged KV cache of one decoder stack: (L, N_blocks, Hkv, P, D) pages shared by every sequence.

Which pages belong to which sequence is bookkeeping of the scheduler (runtime/blocks.py) and of the runner's page
tables; this object only holds the tensors. The engine keeps two of these (embedding module and LLM), since every
generated token passes through both stacks. Page 0 is the scratch page that padding rows of a decode bucket
write to; it never holds a sequence's keys.
"""

from __future__ import annotations

import torch

from .memory import fresh

SCRATCH_PAGE = 0


class PagedKVCache:
    def __init__(self, num_layers: int, num_blocks: int, page: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):  # fmt: skip
        shape = (num_layers, num_blocks, num_kv_heads, page, head_dim)
        self.k = fresh(shape, dtype, device)
        self.v = fresh(shape, dtype, device)

    def free(self) -> None:
        """Drops the pages (the engine is closing): their memory goes back at once."""
        self.k = self.v = None

    @property
    def num_blocks(self) -> int:
        return self.k.shape[1]

    @property
    def page(self) -> int:
        return self.k.shape[3]

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
