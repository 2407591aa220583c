"""Which KV pages each sequence owns, in both stacks, and which prefix pages it can share with earlier requests.

At admission a request's prompt is hashed page by page (runtime/blocks.py) and the longest run of its full pages
already in the cache is shared instead of recomputed, with one rule per model. HoVLE: both stacks restart at the
same position c (whole cached pages in both). HoVLE-HD: the LLM restarts at c (whole cached pages) and the
embedding module at the last page boundary before the first embedding row that LLM token c needs (for an image
token that is its tile's first row, since its 256 LLM tokens come from the tile's 1024 outputs); the rows between
are recomputed, their outputs used only as far as needed. At least the prompt's last token is always prefilled
(its logits give the first token). Reuse is skipped where it would not be exact: dynamic-NTK RoPE past
max_position_embeddings (the rotation of every key depends on the whole length), scoring requests (they want the
logits of every position), and, for the HoVLE-HD reference-quirk decode, pages holding generated tokens.
"""

from __future__ import annotations

from ..errors import InputError
from .blocks import BlockPool, keys_within, page_hash, prefix_hashes
from .prefill import PromptPlan
from .sequence import Sequence


def pages_for(n: int, page: int) -> int:
    return -(-n // page)


class PageManager:
    def __init__(self, runner, prefix_caching: bool):
        self.runner, self.page, self.prefix_caching = runner, runner.page, prefix_caching
        self.pools = (BlockPool(runner.emb_cache.num_blocks), BlockPool(runner.llm_cache.num_blocks))
        cfg = runner.model.cfg
        self.ropes = (cfg.embedding.stack.rope, cfg.llm.stack.rope)

    def check_fits(self, seq: Sequence) -> None:
        """A prompt that needs more pages than a stack has can never run: refused when it is submitted."""
        for k, name in ((0, "embedding module"), (1, "LLM")):
            need = pages_for(len(seq.prompt_ids(k)) + 1, self.page)
            if need > self.pools[k].num_blocks - 1:
                raise InputError(f"the prompt needs {need} KV pages of {self.page} tokens in the {name} but its cache "
                                 f"holds {self.pools[k].num_blocks - 1}; use fewer tiles (max_num) or a shorter "
                                 "prompt, or raise kv_cache_memory")  # fmt: skip

    def cacheable(self, k: int, length: int) -> bool:
        rope = self.ropes[k]
        return self.prefix_caching and not (rope.scaling == "dynamic" and length > rope.max_position_embeddings)

    # ---- admission ----------------------------------------------------------------------------------------
    def start(self, seq: Sequence) -> bool:
        """Plans the prompt's prefill and takes its pages (shared ones first); False when they are not free."""
        req = seq.request
        ids = (seq.prompt_ids(0), seq.prompt_ids(1))
        plan = PromptPlan(self.runner.model, ids[0], ids[1], req.spans_emb, req.spans_llm, req.pixel_values,
                          all_logits=seq.all_logits)  # fmt: skip
        spans = (req.spans_emb, req.spans_llm)
        hashes = [prefix_hashes(ids[k], self.page, spans[k], req.image_keys) for k in (0, 1)]
        starts, shared = self._reusable(seq, plan, ids, hashes)
        need = [pages_for(len(ids[k]), self.page) - len(shared[k]) for k in (0, 1)]
        for k in (0, 1):
            taken_free = sum(self.pools[k].ref[p] == 0 for p in shared[k])
            if need[k] > self.pools[k].num_free - taken_free:
                plan.release()
                return False
        for k in (0, 1):
            self.pools[k].share(shared[k])
            seq.pages[k][:] = shared[k] + self.pools[k].allocate(need[k])
            seq.hashes[k][:] = hashes[k]
        plan.emb_done, plan.llm_done = starts
        seq.kv_len, seq.plan, seq.reused, seq.prefilled = list(starts), plan, starts, 0
        return True

    def _reusable(self, seq, plan: PromptPlan, ids, hashes) -> tuple[tuple[int, int], tuple[list, list]]:
        if seq.all_logits or not self.prefix_caching:
            return (0, 0), ([], [])
        hit = [self.pools[k].cached(hashes[k]) if self.cacheable(k, len(ids[k])) else [] for k in (0, 1)]
        p = self.page
        c = min(len(hit[1]) * p, (len(ids[1]) - 1) // p * p)
        if not plan.hd:
            c = e = min(c, len(hit[0]) * p)
        else:
            e = min(len(hit[0]) * p, plan.first_needed(c) // p * p)
        return (e, c), (hit[0][: e // p], hit[1][: c // p])

    def write_tables(self, seq: Sequence) -> None:
        for k, stack in ((0, "emb"), (1, "llm")):
            self.runner.set_pages(stack, seq.row, 0, seq.pages[k])

    # ---- decoding -----------------------------------------------------------------------------------------
    def grow(self, seq: Sequence) -> None:
        """A page for each stack whose next stored position starts one (raises OutOfPages when none is free)."""
        for k, stack in ((0, "emb"), (1, "llm")):
            if k == 0 and self.runner.quirk:
                continue  # the quirk stores no generated token in the embedding module
            if seq.kv_len[k] // self.page >= len(seq.pages[k]):
                page = self.pools[k].allocate(1)
                seq.pages[k].extend(page)
                self.runner.set_pages(stack, seq.row, len(seq.pages[k]) - 1, page)

    def register_prompt(self, seq: Sequence) -> None:
        """After the prefill: the prompt's full pages become findable by their hashes."""
        for k in (0, 1):
            if self.cacheable(k, len(seq.prompt_ids(k))):
                for page, h in zip(seq.pages[k], seq.hashes[k]):
                    self.pools[k].register(page, h)

    def register_full(self, seq: Sequence) -> None:
        """Pages that decoding has just filled get their hashes (so a next turn of a chat can reuse them)."""
        for k in (0, 1):
            if self.runner.quirk and k == 1:
                continue  # its generated tokens' keys come from the quirk's embedding path: not a prefill's
            hashes, full, p = seq.hashes[k], seq.kv_len[k] // self.page, self.page
            spans = seq.request.spans_emb if k == 0 else seq.request.spans_llm
            while len(hashes) < full:
                i = len(hashes)
                keys = keys_within(spans, seq.request.image_keys, i * p, (i + 1) * p)
                hashes.append(page_hash(hashes[-1] if hashes else b"", seq.stored_ids(k)[i * p : (i + 1) * p], keys))
                if self.cacheable(k, seq.kv_len[k]):
                    self.pools[k].register(seq.pages[k][i], hashes[-1])

    def release(self, seq: Sequence) -> None:
        for k in (0, 1):
            self.pools[k].release(seq.pages[k])
            seq.pages[k].clear()
            seq.hashes[k].clear()
