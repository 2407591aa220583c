"""The paged KV cache of one stack: (L, N_pages, Hkv, P, D) keys and values shared by every sequence.

Which pages belong to which sequence is the scheduler's bookkeeping (runtime/page_tables.py) and the runner's page
tables; this object only holds the tensors. Page 0 is the scratch page that padding rows of a decode bucket write
to; it never holds a sequence's keys.
"""

from __future__ import annotations

import torch

from .memory import fresh

SCRATCH_PAGE = 0


class PagedKVCache:
    def __init__(
        self,
        num_layers: int,
        num_pages: int,
        page_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (num_layers, num_pages, num_kv_heads, page_size, head_dim)
        self.num_pages, self.page_size = num_pages, page_size
        self.k = fresh(shape, dtype, device)
        self.v = fresh(shape, dtype, device)

    def free(self) -> None:
        """Drops the pages (the engine is closing): their memory goes back at once."""
        self.k = self.v = None

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
