"""The model runner: everything on the device. Both paged KV caches, the per-row decode state, prefill of prompt
chunks, token selection and the decode step (hovle/runtime/decode.py, captured as CUDA graphs).

Rows: up to `max_batch` sequences hold a row each while they are scheduled (their page tables, next positions,
last token, sampling settings and repetition-penalty mask live in row-indexed device tensors); the last row is
the scratch row that padding rows of a decode bucket point at (its page table is all scratch page). The scheduler
decides which sequences run and which pages they own; the runner only executes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generation import SamplingParams
from ..model.layers import prefill_batch
from ..model.model import HoVLEModel
from .decode import DecodeStep
from .kv_cache import SCRATCH_PAGE, PagedKVCache
from .memory import fresh
from .prefill import PromptPlan


@dataclass
class PrefillWork:
    """Embedding positions [a, b) of one plan; its page lists cover them and the LLM tokens they make ready."""

    plan: PromptPlan
    a: int
    b: int
    emb_pages: list[int]
    llm_pages: list[int]


class ModelRunner:
    def __init__(self, model: HoVLEModel, *, max_batch: int, num_pages: tuple[int, int], page: int,
                 max_pages: tuple[int, int], cuda_graphs: bool, quirk: bool, vocab_limit: int | None):  # fmt: skip
        self.model, self.page, self.quirk = model, page, quirk
        e, m, dev = model.cfg.embedding.stack, model.cfg.llm.stack, model.device
        self.emb_cache = PagedKVCache(e.num_layers, num_pages[0], page, e.num_kv_heads, e.head_dim, model.dtype, dev)
        self.llm_cache = PagedKVCache(m.num_layers, num_pages[1], page, m.num_kv_heads, m.head_dim, model.dtype, dev)
        self.max_pages = max_pages
        self.scratch = max_batch
        self.vocab_limit = vocab_limit  # ids >= this cannot be decoded by the tokenizer: never selected
        n = max_batch + 1
        self.tokens, self.emb_pos, self.llm_pos, self.hd_len, self.top_k = (fresh((n,), torch.int64, dev)
                                                                          for _ in range(5))  # fmt: skip
        self.temperature, self.top_p, self.penalty = (fresh((n,), torch.float32, dev) for _ in range(3))
        self.seen = fresh((n, model.cfg.llm.vocab_size), torch.bool, dev)
        self.emb_tables = fresh((n, max_pages[0]), torch.int32, dev)
        self.llm_tables = fresh((n, max_pages[1]), torch.int32, dev)
        self.begin(self.scratch, 1, 0, SamplingParams(), [])
        self.tokens[self.scratch] = 0
        self.emb_tables[self.scratch] = SCRATCH_PAGE
        self.llm_tables[self.scratch] = SCRATCH_PAGE
        self.step = DecodeStep(self, cuda_graphs)

    def close(self) -> None:
        """Frees the device memory at once: both KV caches, the penalty mask and the captured graphs (the runner
        cannot run afterwards; the engine is closed)."""
        self.step.close()
        self.emb_cache.free()
        self.llm_cache.free()
        self.seen = None

    @property
    def capacity(self) -> tuple[int, int]:
        """Most positions a sequence can hold in each stack (the page tables' width)."""
        return self.max_pages[0] * self.page, self.max_pages[1] * self.page

    # ---- rows ---------------------------------------------------------------------------------------------
    def set_pages(self, stack: str, row: int, first: int, pages: list[int]) -> None:
        if pages:
            table = self.emb_tables if stack == "emb" else self.llm_tables
            table[row, first : first + len(pages)] = torch.tensor(pages, dtype=torch.int32)

    def begin(self, row: int, emb_len: int, llm_len: int, params: SamplingParams, seen_ids: list[int]) -> None:
        """A sequence's row once its prompt is in the caches: next positions, sampling settings, penalty mask."""
        self.emb_pos[row] = emb_len
        self.hd_len[row] = emb_len
        self.llm_pos[row] = llm_len
        self.temperature[row] = params.temperature
        self.top_k[row] = params.top_k
        self.top_p[row] = params.top_p
        self.penalty[row] = params.repetition_penalty
        self.seen[row] = False
        if params.repetition_penalty != 1.0 and seen_ids:
            self.seen[row, torch.tensor(seen_ids, dtype=torch.int64)] = True

    # ---- prefill ------------------------------------------------------------------------------------------
    def prefill(self, work: list[PrefillWork]) -> list[torch.Tensor | None]:
        """Runs the chunks through both stacks in two packed forwards. Returns per item the fp32 logits its
        prompt produced: (1, V) of the last token when the prompt is complete, every row's for all_logits
        plans, else None."""
        m = self.model
        x = torch.cat([w.plan.emb_inputs(w.a, w.b) for w in work])
        batch = prefill_batch(m.emb_rope, [w.emb_pages for w in work], [w.a for w in work],
                              [w.b - w.a for w in work], [len(w.plan.ids_emb) for w in work], self.page,
                              m.dtype, m.device)  # fmt: skip
        h = m.emb_forward(x, batch, self.emb_cache)
        parts, offset = [], 0
        for i, w in enumerate(work):
            l0, l1, inputs = w.plan.take_emb_outputs(w.a, w.b, h[offset : offset + w.b - w.a])
            offset += w.b - w.a
            if inputs is not None:
                parts.append((i, l0, l1, inputs))
        out: list[torch.Tensor | None] = [None] * len(work)
        if parts:
            self._llm_prefill(work, parts, out)
        return out

    def _llm_prefill(self, work, parts, out) -> None:
        m = self.model
        plans = [work[i].plan for i, *_ in parts]
        batch = prefill_batch(m.llm_rope, [work[i].llm_pages for i, *_ in parts], [l0 for _, l0, _, _ in parts],
                              [l1 - l0 for _, l0, l1, _ in parts], [len(p.ids_llm) for p in plans], self.page,
                              m.dtype, m.device)  # fmt: skip
        hidden = m.llm_forward(torch.cat([x for *_, x in parts]), batch, self.llm_cache)
        offset = 0
        for (i, l0, l1, _), plan in zip(parts, plans):
            plan.llm_done = l1
            rows = hidden[offset : offset + l1 - l0]
            offset += l1 - l0
            if plan.all_logits:
                out[i] = m.logits(rows)
            elif plan.finished:
                out[i] = m.logits(rows[-1:])

    # ---- token selection ----------------------------------------------------------------------------------
    def select(self, logits: torch.Tensor, rows: torch.Tensor, uniform: torch.Tensor, penalty: bool,
               greedy: bool) -> torch.Tensor:  # fmt: skip
        """(B, V) fp32 logits of `rows` -> (2, B) int64: the new tokens and a non-finite-logits flag per row.
        Writes the tokens into the rows' state. No host read: runs inside the captured decode step."""
        ops = self.model.ops
        bad = (~torch.isfinite(logits)).any(dim=-1)  # before the vocabulary mask adds its -inf
        if self.vocab_limit is not None:
            logits[:, self.vocab_limit :].fill_(float("-inf"))
        if penalty:
            logits = ops.repetition_penalty(logits, self.seen[rows], self.penalty[rows])
        if greedy:
            new = ops.greedy(logits)
        else:
            new = ops.sample(logits, self.temperature[rows], self.top_k[rows], self.top_p[rows], uniform)
        self.tokens.index_copy_(0, rows, new)
        if penalty:
            self.seen.index_put_((rows, new), torch.ones_like(new, dtype=torch.bool))
        return torch.stack((new, bad.to(torch.int64)))

    def first_tokens(self, logits: torch.Tensor, rows: list[int], uniform: list[float], penalty: bool,
                     greedy: bool) -> tuple[list[int], list[bool]]:  # fmt: skip
        dev = self.model.device
        idx = torch.tensor(rows, dtype=torch.int64).to(dev)
        u = torch.tensor(uniform, dtype=torch.float32).to(dev)
        new, bad = self.select(logits, idx, u, penalty, greedy).tolist()
        return new, [bool(b) for b in bad]
