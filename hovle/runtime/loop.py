"""The engine's loop: its own thread, which alone drives the scheduler and the runner, plan by plan.

Callers (Engine.generate, the HTTP server) only submit and cancel, from any thread: submissions wait in an inbox
until the loop takes them, a cancellation is a flag the scheduler reaps, and each request's events go back through
its own queue. An exception inside a step fails the sequences it was running and the loop goes on serving; closing
fails what is left and frees the runner's device memory.
"""

from __future__ import annotations

import threading

from ..errors import EngineClosed, Overloaded
from .output import SequenceText
from .runner import ModelRunner
from .scheduler import Scheduler
from .sequence import Sequence


class EngineLoop:
    def __init__(self, scheduler: Scheduler, runner: ModelRunner, decode_text, max_queue: int):
        self.scheduler, self.runner, self.max_queue = scheduler, runner, max_queue
        self.decode_text = decode_text  # ids -> text (the tokenizer's, unknown ids adding nothing)
        self._inbox: list[Sequence] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self.scheduler.pages.check_fits(seq)
            seq.text = SequenceText(self.decode_text, seq.params.stop)
            seq.generator = seq.params.generator()
        with self._cv:
            if self._closed:
                raise EngineClosed("the engine is closed")
            waiting = len(self._inbox) + len(self.scheduler.waiting)
            if waiting + len(seqs) > self.max_queue:
                raise Overloaded(f"the waiting queue is full ({waiting} of {self.max_queue} requests)")
            self._inbox.extend(seqs)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hovle-engine", daemon=True)
                self._thread.start()
            self._cv.notify()

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

    def _run(self) -> None:
        scheduler = self.scheduler
        while True:
            with self._cv:
                while not self._closed and scheduler.idle and not self._inbox:
                    self._cv.wait()
                if self._closed:
                    break
                scheduler.waiting.extend(self._inbox)
                self._inbox.clear()
            try:
                plan = scheduler.schedule()
                if plan is not None:
                    scheduler.update(plan, self.runner.execute(plan))
            except Exception as exc:  # noqa: BLE001 - an engine bug: fail what was scheduled, keep serving
                scheduler.fail_active(exc)
        with self._cv:
            scheduler.waiting.extend(self._inbox)
            self._inbox.clear()
        scheduler.fail_all(EngineClosed("the engine was closed before this request finished"))
        self.runner.close()
