"""The model runner: everything on the device. The KV caches of every stack, the per-row decode state, and the
execution of the scheduler's plans: prompt chunks through the model (the family's packed prefill), token selection,
and the decode step (runtime/decode.py, captured as CUDA graphs).

Rows: up to `max_batch` sequences hold a row each while they are scheduled (their page tables, next position in each
stack, last token, sampling settings and repetition-penalty mask live in row-indexed device tensors); the last row
is the scratch row that padding rows of a decode bucket point at (its page tables are all scratch page). The
runner decides nothing: what runs, in which row, with which pages, is in the plan.
"""

from __future__ import annotations

import torch

from ..generation import SamplingParams
from .decode import DecodeStep
from .kv_cache import SCRATCH_PAGE, PagedKVCache
from .memory import fresh
from .plan import DecodeOutput, DecodePlan, PrefillOutput, PrefillPlan, PrefillWork, TableWrite


class ModelRunner:
    def __init__(
        self,
        model,
        *,
        max_batch: int,
        num_pages: tuple[int, ...],
        page_size: int,
        max_pages: tuple[int, ...],
        cuda_graphs: bool,
        vocab_limit: int | None,
    ):
        self.model, self.page_size, self.max_pages = model, page_size, max_pages
        dev, n = model.device, max_batch + 1
        self.caches = [
            PagedKVCache(s.num_layers, num_pages[k], page_size, s.num_kv_heads, s.head_dim, model.dtype, dev)
            for k, s in enumerate(model.stacks)
        ]
        self.scratch = max_batch
        self.vocab_limit = vocab_limit  # ids >= this cannot be decoded by the tokenizer: never selected
        self.tokens, self.top_k = fresh((n,), torch.int64, dev), fresh((n,), torch.int64, dev)
        self.positions = [fresh((n,), torch.int64, dev) for _ in model.stacks]  # next position per row and stack
        self.temperature, self.top_p, self.penalty = (fresh((n,), torch.float32, dev) for _ in range(3))
        self.seen = fresh((n, model.vocab_size), torch.bool, dev)
        self.tables = [fresh((n, m), torch.int32, dev) for m in max_pages]
        self.begin(self.scratch, [1] + [0] * (len(model.stacks) - 1), SamplingParams(), [])
        self.tokens[self.scratch] = 0
        for table in self.tables:
            table[self.scratch] = SCRATCH_PAGE
        self.decoder = DecodeStep(self, cuda_graphs)

    def close(self) -> None:
        """Frees the device memory at once: the KV caches, the penalty mask and the captured graphs (the runner
        cannot run afterwards; the engine is closed)."""
        self.decoder.close()
        for cache in self.caches:
            cache.free()
        self.seen = None

    @property
    def capacity(self) -> tuple[int, ...]:
        """Most positions a sequence can hold in each stack (the page tables' width)."""
        return tuple(m * self.page_size for m in self.max_pages)

    # ---- plans --------------------------------------------------------------------------------------------
    def execute(self, plan: PrefillPlan | DecodePlan) -> PrefillOutput | DecodeOutput:
        self.write_tables(plan.tables)
        if isinstance(plan, DecodePlan):
            tokens, bad = self.decoder([s.row for s in plan.seqs], plan.uniform, plan.max_kv, plan.penalty, plan.greedy)
            return DecodeOutput(tokens, bad)
        return self._prefill(plan)

    def write_tables(self, writes: list[TableWrite]) -> None:
        for w in writes:
            self.tables[w.stack][w.row, w.first : w.first + len(w.pages)] = torch.tensor(w.pages, dtype=torch.int32)

    def _prefill(self, plan: PrefillPlan) -> PrefillOutput:
        """The chunks in one packed prefill; the prompts they finish begin their rows and get their first token."""
        work = [PrefillWork(c.seq.plan, tuple(c.seq.kv_len), c.end, tuple(c.seq.pages)) for c in plan.chunks]
        results = self.model.prefill(work, self.caches, self.page_size)
        cached = [positions for positions, _ in results]
        scores = [
            logits.cpu() if c.seq.all_logits and logits is not None else None
            for c, (_, logits) in zip(plan.chunks, results)
        ]
        ready = [
            (c, positions, logits)
            for c, (positions, logits) in zip(plan.chunks, results)
            if c.finishes and not c.seq.all_logits
        ]
        if not ready:
            return PrefillOutput(cached, scores, [], [])
        for c, positions, _ in ready:
            seq = c.seq
            self.begin(seq.row, positions, seq.params, seq.prompt_ids(len(positions) - 1) if seq.penalty else [])
        tokens, bad = self.first_tokens(
            torch.cat([logits for *_, logits in ready]),
            [c.seq.row for c, *_ in ready],
            [c.uniform for c, *_ in ready],
            plan.penalty,
            plan.greedy,
        )
        return PrefillOutput(cached, scores, tokens, bad)

    # ---- rows ---------------------------------------------------------------------------------------------
    def begin(self, row: int, positions, params: SamplingParams, seen_ids: list[int]) -> None:
        """A sequence's row once its prompt is in the caches: next positions, sampling settings, penalty mask."""
        for k, pos in enumerate(positions):
            self.positions[k][row] = pos
        self.temperature[row] = params.temperature
        self.top_k[row] = params.top_k
        self.top_p[row] = params.top_p
        self.penalty[row] = params.repetition_penalty
        self.seen[row] = False
        if params.repetition_penalty != 1.0 and seen_ids:
            self.seen[row, torch.tensor(seen_ids, dtype=torch.int64)] = True

    # ---- token selection ----------------------------------------------------------------------------------
    def select(
        self, logits: torch.Tensor, rows: torch.Tensor, uniform: torch.Tensor, penalty: bool, greedy: bool
    ) -> torch.Tensor:
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

    def first_tokens(
        self, logits: torch.Tensor, rows: list[int], uniform: list[float], penalty: bool, greedy: bool
    ) -> tuple[list[int], list[bool]]:
        dev = self.model.device
        idx = torch.tensor(rows, dtype=torch.int64).to(dev)
        u = torch.tensor(uniform, dtype=torch.float32).to(dev)
        new, bad = self.select(logits, idx, u, penalty, greedy).tolist()
        return new, [bool(b) for b in bad]
