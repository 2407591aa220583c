"""The pages of one stack's KV cache: free pages, shared pages, and pages that hold a known prefix.

A page is identified for reuse by a hash chained over the pages before it: hash(previous page's hash, the page's
token ids, the content keys of the images whose tokens it holds). Two requests that start with the same tokens
and the same images (same pixels, same tiling) therefore produce the same hashes for their common full pages, and
a later one can point its page table at the pages an earlier one filled (vLLM and SGLang key multimodal prefix
blocks the same way). A page is shared by reference count; when the count drops to zero it goes to the back of
the free list but keeps its hash, so it can still be found until the allocator hands it out again (least recently
freed first).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from .kv_cache import SCRATCH_PAGE


class OutOfPages(Exception):
    """Not enough free pages; the scheduler waits or preempts (never shown to a user)."""


def page_hash(parent: bytes, ids: list[int], image_keys: list[bytes]) -> bytes:
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(array("q", ids).tobytes())
    for key in image_keys:
        digest.update(key)
    return digest.digest()


def keys_within(spans: list[tuple[int, int]], keys: list[bytes], start: int, end: int) -> list[bytes]:
    """Content keys of the images whose tokens (spans[i] = [a, b) in the sequence) meet positions [start, end)."""
    return [k for (a, b), k in zip(spans, keys) if a < end and b > start]


def prefix_hashes(ids: list[int], page_size: int, spans: list[tuple[int, int]], keys: list[bytes]) -> list[bytes]:
    """Chained hashes of the full pages of `ids`; spans[i] is where image i (content key keys[i]) sits in `ids`."""
    out, parent = [], b""
    for start in range(0, len(ids) - page_size + 1, page_size):
        parent = page_hash(parent, ids[start : start + page_size], keys_within(spans, keys, start, start + page_size))
        out.append(parent)
    return out


class PagePool:
    """num_pages pages of one stack, page SCRATCH_PAGE excluded (it is never handed out)."""

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self.ref = [0] * num_pages
        self.ref[SCRATCH_PAGE] = 1  # never handed out, never freed
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_pages))
        del self._free[SCRATCH_PAGE]
        self._hash_of: dict[int, bytes] = {}
        self._by_hash: dict[bytes, int] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_pages - 1 - len(self._free)

    def allocate(self, n: int) -> list[int]:
        """n fresh pages (reference count 1), evicting the least recently freed cached ones."""
        if n > len(self._free):
            raise OutOfPages(f"{n} pages wanted, {len(self._free)} free")
        pages = []
        for _ in range(n):
            page, _ = self._free.popitem(last=False)
            old = self._hash_of.pop(page, None)
            if old is not None:
                del self._by_hash[old]
            self.ref[page] = 1
            pages.append(page)
        return pages

    def release(self, pages: list[int]) -> None:
        for page in pages:
            self.ref[page] -= 1
            if self.ref[page] == 0:
                self._free[page] = None  # most recently freed: evicted last
            elif self.ref[page] < 0:
                raise AssertionError(f"page {page} released more often than taken")

    def cached(self, hashes: list[bytes]) -> list[int]:
        """The pages holding the longest run of `hashes` from the start (not yet taken: see `share`)."""
        pages = []
        for h in hashes:
            page = self._by_hash.get(h)
            if page is None:
                break
            pages.append(page)
        return pages

    def share(self, pages: list[int]) -> None:
        """Take a reference on cached pages (a free one leaves the free list)."""
        for page in pages:
            if self.ref[page] == 0:
                del self._free[page]
            self.ref[page] += 1

    def register(self, page: int, h: bytes) -> None:
        """Page `page` now holds the full page whose chained hash is h (first writer wins)."""
        if h not in self._by_hash and page not in self._hash_of:
            self._by_hash[h] = page
            self._hash_of[page] = h
