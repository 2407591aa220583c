"""A request inside the runtime: its ids, pages, progress, generated tokens, text and events."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum

import torch

from ..generation import SamplingParams
from .output import SequenceText

_ids = itertools.count()


class Status(Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request: object  # the family's request: stack_ids(k), stack_spans(k), image_keys, pixel_values, tiles
    params: SamplingParams
    max_new: int  # most new tokens (max_new_tokens clamped to the context)
    events: object  # anything with put(event): the caller's queue (hovle/runtime/output.py's events)
    stacks: int = 2  # KV stacks of the model
    index: int = 0  # position in the caller's batch
    stream: bool = False
    all_logits: bool = False  # a scoring request: the prompt's logits, no generation
    text: SequenceText | None = None
    id: int = field(default_factory=lambda: next(_ids))
    status: Status = Status.WAITING
    row: int | None = None
    plan: object = None  # the family's prompt plan while prefilling
    cancelled: bool = False
    generator: torch.Generator | None = None
    prefilled: int = 0  # token-stack positions this request computed in prefill (its last admission)
    preempted: int = 0
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    t_last: float = 0.0
    t_done: float | None = None
    finish_reason: str | None = None
    logits: list[torch.Tensor] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)

    def __post_init__(self):
        n = self.stacks
        self.pages: list[list[int]] = [[] for _ in range(n)]  # page ids per stack
        self.hashes: list[list[bytes]] = [[] for _ in range(n)]  # of their full pages
        self.kv_len: list[int] = [0] * n  # positions stored per stack: the prefill's progress, then decoding's
        self.reused: tuple[int, ...] = (0,) * n  # prompt positions taken from cached pages

    def prompt_ids(self, stack: int) -> list[int]:
        """What a (re)prefill puts through the stack: the prompt, and after a preemption the tokens generated so
        far too (their positions follow the prompt in every stack)."""
        return self.request.stack_ids(stack) + self.generated

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
