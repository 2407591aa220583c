"""The scheduler: what runs next, one step at a time, on the engine's own thread (continuous batching).

A step admits waiting requests in FIFO order while a row and their prompt's pages are free (a prompt's pages are
taken at admission: it needs them all to finish), runs one prefill chunk of at most `prefill_chunk` embedding
positions over the requests being prefilled (so a 13k-token HoVLE-HD prompt delays the running streams by one
chunk per step, not by its whole prefill), then one decode step for every running sequence. A running sequence
gets a page when its next token starts one; when none is free the youngest other sequence is preempted: its pages
and row are freed and it goes back to the front of the queue, to be prefilled again with the tokens it generated
(vLLM's recompute preemption; the HoVLE-HD reference-quirk decode cannot be recomputed, so there the youngest
sequence fails instead). Finished and cancelled sequences free their pages and row at once.

Callers (Engine.generate, the HTTP server) only submit and cancel; events go back through each request's queue.
Exceptions inside a step fail the sequences it was running and the loop goes on serving.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import torch

from ..errors import EngineClosed, InputError, NumericsError, Overloaded
from ..generation import SequenceText
from .blocks import OutOfPages
from .pages import PageManager
from .runner import ModelRunner, PrefillWork
from .sequence import Sequence, Status
from .stats import Stats


class Scheduler:
    def __init__(self, runner: ModelRunner, tokenizer, *, max_batch: int, max_queue: int, prefill_chunk: int,
                 idle_chunk: int, prefix_caching: bool):  # fmt: skip
        self.runner, self.tokenizer = runner, tokenizer
        self.pages = PageManager(runner, prefix_caching)
        self.max_queue, self.prefill_chunk, self.idle_chunk = max_queue, prefill_chunk, idle_chunk
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []
        self._free_rows = list(range(max_batch - 1, -1, -1))
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stats = Stats()

    # ---- callers ------------------------------------------------------------------------------------------
    def submit(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self.pages.check_fits(seq)
            seq.text = SequenceText(self._decode, seq.params.stop)
            seq.generator = seq.params.generator()
        with self._cv:
            if self._closed:
                raise EngineClosed("the engine is closed")
            if len(self.waiting) + len(seqs) > self.max_queue:
                raise Overloaded(f"the waiting queue is full ({len(self.waiting)} of {self.max_queue} requests)")
            self.waiting.extend(seqs)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="hovle-scheduler", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, unknown="skip")  # an id the tokenizer lacks adds no text, never an error

    def cancel(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            seq.cancelled = True
        with self._cv:
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is None:
            self.runner.close()
        elif self._thread is not threading.current_thread():
            self._thread.join()  # the loop frees the runner's memory as it ends

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.prefilling or self.running)

    # ---- the loop -----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and self.idle:
                    self._cv.wait()
                if self._closed:
                    break
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - an engine bug: fail what was scheduled, keep serving
                for seq in self.prefilling + self.running:
                    self._fail(seq, exc)
        for seq in list(self.waiting) + self.prefilling + self.running:
            self._fail(seq, EngineClosed("the engine was closed before this request finished"))
        self.runner.close()

    def step(self) -> None:
        self._reap()
        self._admit()
        if self.prefilling:
            self._prefill_round()
        if self.running:
            self._decode_round()

    def _reap(self) -> None:
        with self._cv:
            gone = [s for s in self.waiting if s.cancelled]
            for seq in gone:
                self.waiting.remove(seq)
        for seq in gone + [s for s in self.prefilling + self.running if s.cancelled]:
            self._finish(seq, "cancelled")

    def _admit(self) -> None:
        while self._free_rows:
            with self._cv:
                if not self.waiting:
                    return
                seq = self.waiting[0]
                if seq.cancelled:
                    self.waiting.popleft()
                    self._finish(seq, "cancelled")
                    continue
            if not self.pages.start(seq):
                return  # its pages are not free yet: FIFO, nobody overtakes it
            with self._cv:
                self.waiting.popleft()
            seq.row = self._free_rows.pop()
            seq.status = Status.PREFILL
            self.pages.write_tables(seq)
            self.prefilling.append(seq)
            if seq.reused[1]:
                self.stats.prefix_hit_tokens += seq.reused[1]
                self.stats.prefix_hit_requests += 1

    # ---- prefill ------------------------------------------------------------------------------------------
    def _prefill_round(self) -> None:
        # Chunks exist to keep running streams moving; with none running, a whole prompt (up to IDLE_CHUNK) goes in
        # one forward: fewer launches, no re-read of the prompt's own keys, and the fastest TTFT.
        budget = self.prefill_chunk if self.running else self.idle_chunk
        work, seqs = [], []
        for seq in self.prefilling:
            if budget <= 0:
                break
            a = seq.plan.emb_done
            b = min(len(seq.plan.ids_emb), a + budget)
            work.append(PrefillWork(seq.plan, a, b, seq.pages[0], seq.pages[1]))
            seqs.append(seq)
            budget -= b - a
        outs = self.runner.prefill(work)
        done = []
        for seq, out in zip(seqs, outs):
            llm_before = seq.kv_len[1]
            seq.kv_len = [seq.plan.emb_done, seq.plan.llm_done]
            seq.prefilled += seq.kv_len[1] - llm_before
            self.stats.prefill_tokens += seq.kv_len[1] - llm_before
            if seq.all_logits and out is not None:
                seq.logits.append(out.cpu())
            if seq.plan.finished:
                done.append((seq, out))
        if done:
            self._prefilled(done)

    def _prefilled(self, done: list) -> None:
        for seq, _ in done:
            seq.plan.release()
            seq.plan = None
            self.prefilling.remove(seq)
            self.pages.register_prompt(seq)
        for seq, _ in [d for d in done if d[0].all_logits]:
            seq.events.put((seq.index, "logits", None))
            self._finish(seq, "scored")
        ready = [(seq, out) for seq, out in done if not seq.all_logits]
        if not ready:
            return
        for seq, _ in ready:
            seq.status = Status.RUNNING
            seen = seq.prompt_ids(1) if seq.penalty else []
            self.runner.begin(seq.row, seq.kv_len[0], seq.kv_len[1], seq.params, seen)
        logits = torch.cat([out for _, out in ready])
        seqs = [seq for seq, _ in ready]
        new, bad = self.runner.first_tokens(logits, [s.row for s in seqs], [s.uniform() for s in seqs],
                                            any(s.penalty for s in seqs), all(s.greedy for s in seqs))  # fmt: skip
        self.running += seqs
        self._accept(seqs, new, bad)

    # ---- decode -------------------------------------------------------------------------------------------
    def _decode_round(self) -> None:
        for seq in list(self.running):
            if seq.status is Status.RUNNING:
                self._grow(seq)
        seqs = list(self.running)
        if not seqs:
            return
        rows, uniform = [s.row for s in seqs], [s.uniform() for s in seqs]
        max_kv = (max(s.kv_len[0] for s in seqs) + 1, max(s.kv_len[1] for s in seqs) + 1)
        new, bad = self.runner.step(rows, uniform, max_kv, any(s.penalty for s in seqs), all(s.greedy for s in seqs))
        self.stats.decode_steps += 1
        for seq in seqs:
            if not self.runner.quirk:
                seq.kv_len[0] += 1
            seq.kv_len[1] += 1
            self.pages.register_full(seq)
        self._accept(seqs, new, bad)

    def _grow(self, seq: Sequence) -> None:
        """Pages for the positions this step stores; preempts (or, for the quirk, fails) the youngest on a miss."""
        while True:
            try:
                self.pages.grow(seq)
                return
            except OutOfPages:  # the youngest goes first: prompts still being prefilled, then running sequences
                victim = next((s for s in [*reversed(self.prefilling), *reversed(self.running)] if s is not seq), None)
                if victim is None:
                    self._fail(seq, InputError(f"request {seq.id}: the KV cache is full with this sequence alone "
                                               f"({seq.kv_len[1]} tokens); raise kv_cache_memory"))  # fmt: skip
                    return
                self._preempt(victim)

    def _preempt(self, seq: Sequence) -> None:
        if self.runner.quirk:
            self._fail(seq, InputError(f"request {seq.id}: the KV cache ran out and hd_decode='reference-quirk' "
                                       "sequences cannot be recomputed; raise kv_cache_memory or max_batch lower"))
            return
        self._unschedule(seq)
        seq.status, seq.kv_len = Status.WAITING, [0, 0]
        seq.preempted += 1
        self.stats.preemptions += 1
        with self._cv:
            self.waiting.appendleft(seq)

    # ---- results ------------------------------------------------------------------------------------------
    def _accept(self, seqs: list[Sequence], new: list[int], bad: list[bool]) -> None:
        now = time.perf_counter()
        for seq, token, nonfinite in zip(seqs, new, bad):
            if nonfinite:
                self._fail(seq, NumericsError(f"request {seq.id}: the model's logits for generated token "
                                              f"{len(seq.generated)} are not finite (NaN or inf)"))  # fmt: skip
                continue
            if seq.t_first is None:
                seq.t_first = now
                self.stats.ttft.observe(now - seq.t_submit)
            elif seq.generated:
                self.stats.tpot.observe(now - seq.t_last)
            seq.t_last = now
            seq.generated.append(token)
            self.stats.generated_tokens += 1
            reason = self._finish_reason(seq, token)
            delta = seq.text.delta(reason is not None) if seq.stream else ""
            seq.events.put((seq.index, "token", (token, delta)))
            if reason is not None:
                self._finish(seq, reason)
        self.running = [s for s in self.running if s.status is Status.RUNNING]

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        """<|im_end|> ends the turn and is not part of the output (ids or text), as in the authors' chat()."""
        if token == self.tokenizer.im_end_id and not seq.params.ignore_eos:
            return "stop"
        if seq.text.add(token):
            return "stop"
        return "length" if len(seq.text.ids) >= seq.budget else None

    def _unschedule(self, seq: Sequence) -> None:
        """Takes seq off the prefill and decode lists and gives back its plan's buffers, its pages and its row."""
        for group in (self.prefilling, self.running):
            if seq in group:
                group.remove(seq)
        if seq.plan is not None:
            seq.plan.release()
            seq.plan = None
        self.pages.release(seq)
        if seq.row is not None:
            self._free_rows.append(seq.row)
            seq.row = None

    def _release(self, seq: Sequence) -> None:
        self._unschedule(seq)
        seq.status = Status.FINISHED
        seq.t_done = time.perf_counter()

    def _finish(self, seq: Sequence, reason: str) -> None:
        self._release(seq)
        seq.finish_reason = reason
        self.stats.requests_cancelled += reason == "cancelled"
        self.stats.requests_finished += reason != "cancelled"
        seq.events.put((seq.index, "done", reason))

    def _fail(self, seq: Sequence, exc: BaseException) -> None:
        if seq.status is Status.FINISHED:
            return
        with self._cv:
            if seq in self.waiting:
                self.waiting.remove(seq)
        self._release(seq)
        self.stats.requests_failed += 1
        seq.events.put((seq.index, "error", exc))
