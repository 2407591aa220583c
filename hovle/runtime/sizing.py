"""How big the runtime is: page size, pages per stack, decode rows and the context, from the engine's options,
the model's KV stacks and the memory at hand.

The KV budget (`kv_cache_memory` bytes, by default 90% of the GPU's free memory after the weights, less a reserve
for activations; on the CPU at most 2 GiB, an eighth of the RAM, and two contexts' (or 16k tokens') worth) is split
between the stacks in the worst-case ratio of their sequence lengths (each stack's `positions_per_token`: HoVLE-HD's
embedding module reads up to 4 positions per LLM position). The context is clamped to what the pages can hold,
unless it was asked for explicitly, which is an error instead. Free GPU memory counts what torch's allocator holds
unused (an earlier engine's freed cache) as free. HOVLE_KV_CACHE_CAP (bytes) caps the default budget: the tests set
it, so that many engines in parallel processes on one GPU each take a small cache instead of 90% of what the first
left.
"""

from __future__ import annotations

import math
import os

import torch

from ..errors import InputError
from .kv_cache import PagedKVCache

DEFAULT_PAGE_SIZE = 64


class Sizing:
    """Page size, pages per stack, rows and context, from the options, the model and the memory at hand."""

    def __init__(self, model, ops, max_context, max_batch, kv_bytes, page_size):
        cuda = model.device.type == "cuda"
        stacks = model.stacks
        rope = stacks[-1].rope  # the token stack's positions bound the context
        natural = int(rope.max_position_embeddings * (rope.factor if rope.scaling else 1))
        self.max_batch = max_batch or (256 if cuda else 64)
        self.page_size = math.lcm(page_size or DEFAULT_PAGE_SIZE, ops.page_multiple)
        ratio = [s.positions_per_token for s in stacks]
        per_token = sum(
            r * PagedKVCache.bytes_per_token(s.num_layers, s.num_kv_heads, s.head_dim, model.dtype)
            for r, s in zip(ratio, stacks)
        )  # bytes per token-stack position, every stack included
        context = max_context or natural
        kv_bytes = kv_bytes or self._default_bytes(cuda, context, per_token)
        tokens = kv_bytes // per_token  # token-stack positions the KV cache holds
        if max_context is not None and tokens < max_context:
            raise InputError(
                f"max_context = {max_context} needs {max_context * per_token} bytes of KV cache but "
                f"{kv_bytes} are available; lower it or raise kv_cache_memory"
            )
        self.max_context = min(context, max(tokens - self.page_size, 2))
        pages = max(tokens // self.page_size, 2)
        self.num_pages = tuple(r * pages + 1 for r in ratio)  # + the scratch page
        self.max_pages = tuple(-(-r * self.max_context // self.page_size) + 1 for r in ratio)

    def _default_bytes(self, cuda: bool, context: int, per_token: int) -> int:
        want = self.max_batch * context * per_token  # never more than all rows' worth
        cap = kv_cache_cap()
        if cuda:
            free, total = torch.cuda.mem_get_info()
            free += torch.cuda.memory_reserved() - torch.cuda.memory_allocated()  # held by torch's allocator, unused
            return max(min(want, cap, int(free * 0.9) - max(1 << 30, total // 10)), 1 << 26)
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return min(want, cap, max(2 * context, 16384) * per_token, 2 << 30, ram // 8)


def kv_cache_cap() -> int:
    """HOVLE_KV_CACHE_CAP: the most bytes a default-sized KV cache takes (unset: no cap)."""
    value = os.environ.get("HOVLE_KV_CACHE_CAP", "")
    if not value:
        return 1 << 62
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"HOVLE_KV_CACHE_CAP = {value!r}; expected a positive number of bytes")
    return int(value)
