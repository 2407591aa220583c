"""The scheduler: what runs next, one plan at a time (continuous batching). It decides; the runner executes.

Each round alternates two plans. The prefill plan admits waiting requests in FIFO order while a row and their
prompt's pages are free (a prompt's pages are taken at admission: it needs them all to finish) and gives the
prompts being prefilled at most `prefill_chunk` first-stack positions in all (so a 13k-token HoVLE-HD prompt delays
the running streams by one chunk per round, not by its whole prefill); with nothing decoding a whole prompt (up to
`idle_chunk`) goes in one forward. The decode plan advances every running sequence by one token. A running
sequence gets a page when its next token starts one; when none is free the youngest other sequence is preempted:
its pages and row are freed and it goes back to the front of the queue, to be prefilled again with the tokens it
generated (vLLM's recompute preemption; a model whose decoding cannot be recomputed, the HoVLE-HD reference-quirk
decode, fails the youngest instead). Finished and cancelled sequences free their pages and row at once.

Only the engine loop's thread (runtime/loop.py) calls it. What a token becomes for the caller (text, stop strings,
the finish reason, events) is runtime/output.py.
"""

from __future__ import annotations

import time
from collections import deque

from ..errors import InputError, NumericsError
from .output import Done, Failed, Scored, Token, finish_reason
from .page_pool import OutOfPages
from .page_tables import PageTables
from .plan import DecodeOutput, DecodePlan, PrefillChunk, PrefillOutput, PrefillPlan
from .sequence import Sequence, Status
from .stats import Stats


class Scheduler:
    def __init__(
        self,
        pages: PageTables,
        *,
        max_batch: int,
        prefill_chunk: int,
        idle_chunk: int,
        stop_ids: tuple[int, ...],
        plan_prompt,
        recomputable: bool,
    ):
        self.pages, self.stacks = pages, pages.stacks
        self.prefill_chunk, self.idle_chunk, self.stop_ids = prefill_chunk, idle_chunk, frozenset(stop_ids)
        self.plan_prompt = plan_prompt  # the model's: (request, generated, all_logits) -> its prompt plan
        self.recomputable = recomputable  # a preempted sequence can be prefilled again with what it generated
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []
        self.free_rows = list(range(max_batch - 1, -1, -1))
        self.stats = Stats()
        self._decode_next = False

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.prefilling or self.running)

    # ---- planning -----------------------------------------------------------------------------------------
    def schedule(self) -> PrefillPlan | DecodePlan | None:
        """The next plan: prompt chunks, then a decode step for every running sequence, in turn."""
        if not self._decode_next:
            self._decode_next = True
            self._reap()
            tables = self._admit()
            if self.prefilling:
                return self._prefill_plan(tables)
        self._decode_next = False
        return self._decode_plan() if self.running else None

    def _reap(self) -> None:
        gone = [s for s in self.waiting if s.cancelled]
        for seq in gone:
            self.waiting.remove(seq)
        for seq in gone + [s for s in self.prefilling + self.running if s.cancelled]:
            self._finish(seq, "cancelled")

    def _admit(self) -> list:
        tables = []
        while self.free_rows and self.waiting:
            seq = self.waiting[0]
            seq.plan = self.plan_prompt(seq.request, seq.generated, seq.all_logits)
            if not self.pages.admit(seq):
                seq.plan.drop_buffers()
                seq.plan = None
                break  # its pages are not free yet: FIFO, nobody overtakes it
            self.waiting.popleft()
            seq.row, seq.status = self.free_rows.pop(), Status.PREFILL
            tables += self.pages.tables(seq)
            self.prefilling.append(seq)
            if seq.reused[-1]:
                self.stats.prefix_hit_tokens += seq.reused[-1]
                self.stats.prefix_hit_requests += 1
        return tables

    def _prefill_plan(self, tables: list) -> PrefillPlan:
        # Chunks exist to keep running streams moving; with none running, a whole prompt (up to idle_chunk) goes in
        # one forward: fewer launches, no re-read of the prompt's own keys, and the fastest TTFT.
        room = self.prefill_chunk if self.running else self.idle_chunk  # first-stack positions this plan may take
        chunks = []
        for seq in self.prefilling:
            if room <= 0:
                break
            n = len(seq.prompt_ids(0))
            end = min(n, seq.kv_len[0] + room)
            finishing = end == n and not seq.all_logits
            chunks.append(PrefillChunk(seq, end, end == n, seq.uniform() if finishing else 0.0))
            room -= end - seq.kv_len[0]
        first = [c.seq for c in chunks if c.finishes and not c.seq.all_logits]
        return PrefillPlan(chunks, tables, any(s.penalty for s in first), all(s.greedy for s in first))

    def _decode_plan(self) -> DecodePlan | None:
        tables = []
        for seq in list(self.running):
            if seq.status is Status.RUNNING:
                tables += self._grow(seq)
        seqs = list(self.running)
        if not seqs:
            return None
        max_kv = tuple(max(s.kv_len[k] for s in seqs) + 1 for k in range(len(self.stacks)))
        return DecodePlan(
            seqs, [s.uniform() for s in seqs], max_kv, any(s.penalty for s in seqs), all(s.greedy for s in seqs), tables
        )

    def _grow(self, seq: Sequence) -> list:
        """Pages for the positions this step stores; preempts (or fails) the youngest other sequence on a miss."""
        while True:
            try:
                return self.pages.grow(seq)
            except OutOfPages:  # the youngest goes first: prompts still being prefilled, then running sequences
                victim = next((s for s in [*reversed(self.prefilling), *reversed(self.running)] if s is not seq), None)
                if victim is None:
                    self._fail(
                        seq,
                        InputError(
                            f"request {seq.id}: the KV cache is full with this sequence alone "
                            f"({seq.kv_len[-1]} tokens); raise kv_cache_memory"
                        ),
                    )
                    return []
                self._preempt(victim)

    def _preempt(self, seq: Sequence) -> None:
        if not self.recomputable:
            self._fail(
                seq,
                InputError(
                    f"request {seq.id}: the KV cache ran out and this model's decoding "
                    "(hd_decode='reference-quirk') cannot be recomputed; raise kv_cache_memory or "
                    "lower max_batch"
                ),
            )
            return
        self._unschedule(seq)
        seq.status, seq.kv_len = Status.WAITING, [0] * len(self.stacks)
        seq.preempted += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(seq)

    # ---- updating from what the runner did ------------------------------------------------------------------
    def update(self, plan: PrefillPlan | DecodePlan, out: PrefillOutput | DecodeOutput) -> None:
        if isinstance(plan, DecodePlan):
            self._decoded(plan, out)
        else:
            self._prefilled(plan, out)

    def _prefilled(self, plan: PrefillPlan, out: PrefillOutput) -> None:
        for chunk, cached, score in zip(plan.chunks, out.cached, out.scores):
            seq, before = chunk.seq, chunk.seq.kv_len[-1]
            seq.kv_len = list(cached)
            seq.prefilled += seq.kv_len[-1] - before
            self.stats.prefill_tokens += seq.kv_len[-1] - before
            if score is not None:
                seq.logits.append(score)
        done = [c.seq for c in plan.chunks if c.finishes]
        for seq in done:
            seq.plan.drop_buffers()
            seq.plan = None
            self.prefilling.remove(seq)
            self.pages.register_prompt(seq)
        for seq in [s for s in done if s.all_logits]:
            seq.events.put(Scored(seq.index))
            self._finish(seq, "scored")
        ready = [s for s in done if not s.all_logits]
        for seq in ready:
            seq.status = Status.RUNNING
        self.running += ready
        self._accept(ready, out.tokens, out.bad)

    def _decoded(self, plan: DecodePlan, out: DecodeOutput) -> None:
        self.stats.decode_steps += 1
        for seq in plan.seqs:
            for k, stack in enumerate(self.stacks):
                seq.kv_len[k] += stack.grows_in_decode
            self.pages.register_decoded(seq)
        self._accept(plan.seqs, out.tokens, out.bad)

    def _accept(self, seqs: list[Sequence], tokens: list[int], bad: list[bool]) -> None:
        now = time.perf_counter()
        for seq, token, nonfinite in zip(seqs, tokens, bad):
            if nonfinite:
                self._fail(
                    seq,
                    NumericsError(
                        f"request {seq.id}: the model's logits for generated token "
                        f"{len(seq.generated)} are not finite (NaN or inf)"
                    ),
                )
                continue
            if seq.t_first is None:
                seq.t_first = now
                self.stats.ttft.observe(now - seq.t_submit)
            elif seq.generated:
                self.stats.tpot.observe(now - seq.t_last)
            seq.t_last = now
            seq.generated.append(token)
            self.stats.generated_tokens += 1
            reason = finish_reason(seq.text, token, self.stop_ids, seq.params.ignore_eos, seq.max_new)
            seq.events.put(Token(seq.index, token, seq.text.delta(reason is not None) if seq.stream else ""))
            if reason is not None:
                self._finish(seq, reason)
        self.running = [s for s in self.running if s.status is Status.RUNNING]

    # ---- ending -------------------------------------------------------------------------------------------
    def _unschedule(self, seq: Sequence) -> None:
        """Takes seq off the prefill and decode lists and gives back its plan's buffers, its pages and its row."""
        for group in (self.prefilling, self.running):
            if seq in group:
                group.remove(seq)
        if seq.plan is not None:
            seq.plan.drop_buffers()
            seq.plan = None
        self.pages.release(seq)
        if seq.row is not None:
            self.free_rows.append(seq.row)
            seq.row = None

    def _end(self, seq: Sequence) -> None:
        self._unschedule(seq)
        seq.status = Status.FINISHED
        seq.t_done = time.perf_counter()

    def _finish(self, seq: Sequence, reason: str) -> None:
        self._end(seq)
        seq.finish_reason = reason
        self.stats.requests_cancelled += reason == "cancelled"
        self.stats.requests_finished += reason != "cancelled"
        seq.events.put(Done(seq.index, reason))

    def _fail(self, seq: Sequence, exc: BaseException) -> None:
        if seq.status is Status.FINISHED:
            return
        if seq in self.waiting:
            self.waiting.remove(seq)
        self._end(seq)
        self.stats.requests_failed += 1
        seq.events.put(Failed(seq.index, exc))

    def fail_active(self, exc: BaseException) -> None:
        """An engine bug in a step: fail what was scheduled, keep serving."""
        for seq in self.prefilling + self.running:
            self._fail(seq, exc)

    def fail_all(self, exc: BaseException) -> None:
        for seq in list(self.waiting) + self.prefilling + self.running:
            self._fail(seq, exc)
