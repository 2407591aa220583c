"""Generation-side bookkeeping: sampling parameters, per-sequence text state with stop strings, results.

Text is always re-decoded from all generated ids (so byte-fallback pieces and the tokenizer's space clean-up come
out exactly as a one-shot decode would) and a stream only releases text that can no longer change: the tail that a
later token could still rewrite (clean-up rules, half a UTF-8 character, the start of a stop string, trailing
spaces the final strip would drop) is held back until the sequence ends. So the concatenated stream always equals
the final text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import InputError

_HOLD_BACK = 8  # characters a later token can still rewrite: clean-up patterns are <= 4, a UTF-8 char <= 4


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep generating through <|im_end|> (benchmarks: exactly max_new_tokens per sequence)

    def __post_init__(self):
        def bad(name: str, expected: str):
            raise InputError(f"{name} = {getattr(self, name)!r}; expected {expected}")

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            bad("max_new_tokens", "an integer >= 1")
        if not _is_real(self.temperature) or self.temperature < 0:
            bad("temperature", "a finite number >= 0 (0 means greedy)")
        if not _is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "an integer >= 0 (0 disables top-k)")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "a number in (0, 1] (1 disables top-p)")
        if not _is_real(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", "a finite number > 0 (1 disables it)")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            bad("seed", "None or an integer in [0, 2**63)")
        if not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "a non-empty string or a list of non-empty strings")
        if not isinstance(self.ignore_eos, bool):
            bad("ignore_eos", "True or False")

    @classmethod
    def build(cls, stop: str | list[str] | tuple[str, ...] | None = None, **kw) -> SamplingParams:
        if stop is not None and not isinstance(stop, (str, list, tuple)):
            raise InputError(f"stop = {stop!r}; expected a non-empty string or a list of non-empty strings")
        unknown = sorted(set(kw) - {f for f in cls.__dataclass_fields__ if f != "stop"})
        if unknown:
            raise InputError(f"unknown sampling parameter(s) {unknown}; expected some of "
                             f"{sorted(cls.__dataclass_fields__)}")  # fmt: skip
        return cls(stop=(stop,) if isinstance(stop, str) else tuple(stop or ()), **kw)

    def generator(self) -> torch.Generator | None:
        if self.temperature == 0:
            return None
        g = torch.Generator(device="cpu")
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        return g


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Timings:
    preprocess_s: float = 0.0  # image loading, tiling, normalising and tokenising
    ttft_s: float = 0.0  # request start to first token (includes preprocessing and prefill)
    decode_s: float = 0.0  # after the first token
    decode_tokens: int = 0  # this request's tokens after its first
    total_s: float = 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int  # LLM-sequence length of the prompt, image tokens included
    finish_reason: str  # "stop" (end-of-turn token or a stop string) or "length"
    tiles: list[int]  # tiles per image, thumbnail included
    timings: Timings = field(default_factory=Timings)
    cached_tokens: int = 0  # prompt tokens (LLM sequence) whose KV came from cached prefix pages


class SequenceText:
    """Generated ids of one sequence and the text a stream may already show."""

    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...]):
        self.decode, self.stops = decode, stops
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped_text: str | None = None
        self.hold = max([_HOLD_BACK] + [len(s) for s in stops])
        self._decoded = (-1, "")  # (number of ids, their text): the stop check and the stream share one decode

    def _text(self) -> str:
        if self._decoded[0] != len(self.ids):
            self._decoded = (len(self.ids), self.decode(self.ids).lstrip())
        return self._decoded[1]

    def add(self, token: int) -> bool:
        """Appends a token; returns True when a stop string has appeared (the text is then final)."""
        self.ids.append(token)
        if not self.stops:
            return False
        text = self._text()
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped_text = text[:cut].rstrip()
        return cut >= 0

    def delta(self, final: bool) -> str:
        """Text not yet emitted that is safe to show now (all of it once final)."""
        if final:
            text = self.final_text()
        else:
            text = self._text()
            text = text[: max(0, len(text.rstrip()) - self.hold)].rstrip()
        if len(text) <= len(self.emitted):
            return ""
        assert text.startswith(self.emitted), "streamed text diverged from the decoded text"
        new, self.emitted = text[len(self.emitted) :], text
        return new

    def final_text(self) -> str:
        return self.stopped_text if self.stopped_text is not None else self._text().rstrip()
