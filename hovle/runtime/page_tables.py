"""Which KV pages each sequence holds in each stack, and which prompt prefixes it can share with earlier requests.

At admission a request's prompt is hashed page by page (runtime/page_pool.py) and the longest run of its full pages
already in the cache is shared instead of recomputed; where the prefill restarts in each stack is the model
family's rule (its prompt plan's `resume`). Reuse is skipped where it would not be exact: dynamic-NTK RoPE past
max_position_embeddings (the rotation of every key depends on the whole length), scoring requests (they want the
logits of every position), and pages filled while decoding in a stack that does not share them (the HoVLE-HD
reference-quirk decode). Nothing here touches the device: page-table changes are handed back as TableWrites for
the runner to apply.
"""

from __future__ import annotations

from ..errors import InputError
from .page_pool import PagePool, keys_within, page_hash, prefix_hashes
from .plan import TableWrite
from .sequence import Sequence


def pages_for(n: int, page_size: int) -> int:
    return -(-n // page_size)


class PageTables:
    def __init__(self, stacks, num_pages: tuple[int, ...], page_size: int, prefix_caching: bool):
        self.stacks, self.page_size, self.prefix_caching = stacks, page_size, prefix_caching
        self.pools = tuple(PagePool(n) for n in num_pages)

    def check_fits(self, seq: Sequence) -> None:
        """A prompt that needs more pages than a stack has can never run: refused when it is submitted."""
        for k, stack in enumerate(self.stacks):
            need = pages_for(len(seq.prompt_ids(k)) + 1, self.page_size)
            if need > self.pools[k].num_pages - 1:
                raise InputError(
                    f"the prompt needs {need} KV pages of {self.page_size} tokens in the {stack.name} "
                    f"stack but its cache holds {self.pools[k].num_pages - 1}; use fewer tiles (max_num) "
                    "or a shorter prompt, or raise kv_cache_memory"
                )

    def cacheable(self, k: int, length: int) -> bool:
        rope = self.stacks[k].rope
        return self.prefix_caching and not (rope.scaling == "dynamic" and length > rope.max_position_embeddings)

    # ---- admission ----------------------------------------------------------------------------------------
    def admit(self, seq: Sequence) -> bool:
        """Takes the pages of seq's prompt (shared ones first) and sets where its prefill starts (seq.kv_len);
        False, with nothing taken, when they are not free."""
        n = len(self.stacks)
        ids = [seq.prompt_ids(k) for k in range(n)]
        hashes = [
            prefix_hashes(ids[k], self.page_size, seq.request.stack_spans(k), seq.request.image_keys) for k in range(n)
        ]
        starts, shared = self._reusable(seq, ids, hashes)
        need = [pages_for(len(ids[k]), self.page_size) - len(shared[k]) for k in range(n)]
        for k in range(n):
            taken_free = sum(self.pools[k].ref[p] == 0 for p in shared[k])
            if need[k] > self.pools[k].num_free - taken_free:
                return False
        for k in range(n):
            self.pools[k].share(shared[k])
            seq.pages[k][:] = shared[k] + self.pools[k].allocate(need[k])
            seq.hashes[k][:] = hashes[k]
        seq.kv_len, seq.reused, seq.prefilled = list(starts), tuple(starts), 0
        return True

    def _reusable(self, seq: Sequence, ids, hashes) -> tuple[tuple[int, ...], list[list[int]]]:
        n = len(self.stacks)
        if seq.all_logits or not self.prefix_caching:
            return (0,) * n, [[] for _ in range(n)]
        hit = [self.pools[k].cached(hashes[k]) if self.cacheable(k, len(ids[k])) else [] for k in range(n)]
        starts = seq.plan.resume(tuple(len(h) * self.page_size for h in hit), self.page_size)
        return starts, [hit[k][: starts[k] // self.page_size] for k in range(n)]

    def tables(self, seq: Sequence) -> list[TableWrite]:
        """The whole page tables of a sequence just given a row."""
        return [TableWrite(seq.row, k, 0, list(pages)) for k, pages in enumerate(seq.pages) if pages]

    # ---- decoding -----------------------------------------------------------------------------------------
    def grow(self, seq: Sequence) -> list[TableWrite]:
        """A page for each stack whose next stored position starts one (OutOfPages when none is free)."""
        writes = []
        for k, stack in enumerate(self.stacks):
            if stack.grows_in_decode and seq.kv_len[k] // self.page_size >= len(seq.pages[k]):
                page = self.pools[k].allocate(1)
                seq.pages[k].extend(page)
                writes.append(TableWrite(seq.row, k, len(seq.pages[k]) - 1, page))
        return writes

    def register_prompt(self, seq: Sequence) -> None:
        """After the prefill: the prompt's full pages become findable by their hashes."""
        for k in range(len(self.stacks)):
            if self.cacheable(k, len(seq.prompt_ids(k))):
                for page, h in zip(seq.pages[k], seq.hashes[k]):
                    self.pools[k].register(page, h)

    def register_decoded(self, seq: Sequence) -> None:
        """Pages that decoding has just filled get their hashes, chained to the pages before them (so the next turn
        of a chat can reuse them)."""
        p, keys = self.page_size, seq.request.image_keys
        for k, stack in enumerate(self.stacks):
            if not stack.shares_decoded_pages:
                continue
            hashes, full, spans = seq.hashes[k], seq.kv_len[k] // p, seq.request.stack_spans(k)
            while len(hashes) < full:
                a, b = len(hashes) * p, (len(hashes) + 1) * p
                parent = hashes[-1] if hashes else b""
                hashes.append(page_hash(parent, seq.stored_ids(k)[a:b], keys_within(spans, keys, a, b)))
                if self.cacheable(k, seq.kv_len[k]):
                    self.pools[k].register(seq.pages[k][len(hashes) - 1], hashes[-1])

    def release(self, seq: Sequence) -> None:
        for k, pool in enumerate(self.pools):
            pool.release(seq.pages[k])
            seq.pages[k].clear()
            seq.hashes[k].clear()

    def usage(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(pages in use, pages in all) per stack."""
        return tuple(p.num_used for p in self.pools), tuple(p.num_pages - 1 for p in self.pools)
