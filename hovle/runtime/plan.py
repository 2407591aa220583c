"""What the scheduler hands the runner for one step, and what the runner hands back.

The scheduler decides (which sequences run, which chunk of which prompt, which pages they hold) and never touches
the device; the runner executes a plan and reports what happened; the scheduler updates from that (vLLM's
EngineCore and nano-vllm's LLMEngine.step work the same way). A step is a PrefillPlan (prompt chunks, and the first
token of the prompts they finish) or a DecodePlan (one token for every running sequence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .sequence import Sequence


@dataclass
class TableWrite:
    """Page table entries [first, first + len(pages)) of a decode row in one stack."""

    row: int
    stack: int
    first: int
    pages: list[int]


@dataclass
class PrefillChunk:
    seq: Sequence
    end: int  # positions [seq.kv_len[0], end) of the first stack go through the model
    finishes: bool  # the chunk completes the prompt: the first token follows (unless it is a scoring request)
    uniform: float = 0.0  # the random draw for that first token


@dataclass
class PrefillWork:
    """What the model's prefill gets for one chunk: first-stack positions [start[0], end) go through the model,
    start[k] positions of stack k are already cached, pages[k] is the sequence's page list in stack k; `plan` is the
    family's prompt plan (the prompt's ids per stack, its images, its buffers between chunks)."""

    plan: object
    start: tuple[int, ...]
    end: int
    pages: tuple[list[int], ...]


@dataclass
class PrefillPlan:
    chunks: list[PrefillChunk]
    tables: list[TableWrite] = field(default_factory=list)  # page tables of newly admitted sequences
    penalty: bool = False  # selection mode of the first tokens
    greedy: bool = True


@dataclass
class DecodePlan:
    seqs: list[Sequence]
    uniform: list[float]
    max_kv: tuple[int, ...]  # a bound on every row's keys per stack after this step (launch sizing)
    penalty: bool
    greedy: bool
    tables: list[TableWrite] = field(default_factory=list)  # pages the step's new positions start


@dataclass
class PrefillOutput:
    cached: list[tuple[int, ...]]  # per chunk: positions now in each stack's cache
    scores: list[torch.Tensor | None]  # per chunk: host fp32 logits of a scoring request's prompt rows
    tokens: list[int]  # first tokens of the finishing generating chunks, in plan order
    bad: list[bool]  # their logits were not finite


@dataclass
class DecodeOutput:
    tokens: list[int]
    bad: list[bool]
