"""A request inside the scheduler: its ids, pages, progress, generated tokens, text and events."""

from __future__ import annotations

import itertools
import queue
import time
from dataclasses import dataclass, field
from enum import Enum

import torch

from ..generation import SamplingParams, SequenceText
from ..request import Request

_ids = itertools.count()


class Status(Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request: Request
    params: SamplingParams
    budget: int  # most new tokens (max_new_tokens clamped to the context)
    events: queue.SimpleQueue  # (index, kind, payload) for the caller
    index: int = 0  # position in the caller's batch
    stream: bool = False
    all_logits: bool = False  # a scoring request: the prompt's logits, no generation
    text: SequenceText | None = None
    id: int = field(default_factory=lambda: next(_ids))
    status: Status = Status.WAITING
    row: int | None = None
    pages: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))  # (embedding, LLM) page ids
    hashes: tuple[list[bytes], list[bytes]] = field(default_factory=lambda: ([], []))  # of their full pages
    kv_len: list[int] = field(default_factory=lambda: [0, 0])  # positions stored per stack
    generated: list[int] = field(default_factory=list)
    plan: object = None  # PromptPlan while prefilling
    cancelled: bool = False
    generator: torch.Generator | None = None
    reused: tuple[int, int] = (0, 0)  # prompt positions taken from cached pages (embedding, LLM)
    prefilled: int = 0  # LLM positions this request computed in prefill (its last admission)
    preempted: int = 0
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    t_last: float = 0.0
    t_done: float | None = None
    finish_reason: str | None = None
    logits: list[torch.Tensor] = field(default_factory=list)

    def prompt_ids(self, stack: int) -> list[int]:
        """What a (re)prefill puts through the stack (0: embedding module, 1: LLM): the prompt, and after a
        preemption the tokens generated so far too (their positions follow the prompt in both stacks)."""
        base = self.request.ids_emb if stack == 0 else self.request.ids_llm
        return base + self.generated

    def stored_ids(self, stack: int) -> list[int]:
        """Token ids of the positions whose keys the stack's pages hold."""
        return self.prompt_ids(stack)[: self.kv_len[stack]]

    @property
    def penalty(self) -> bool:
        return self.params.repetition_penalty != 1.0

    @property
    def greedy(self) -> bool:
        return self.params.temperature == 0

    def uniform(self) -> float:
        """This request's next random draw (0 when greedy: unused)."""
        if self.generator is None:
            return 0.0
        return float(torch.rand((), generator=self.generator, dtype=torch.float64))
