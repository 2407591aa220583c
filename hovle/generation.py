"""What a caller asks of a generation and gets back: sampling parameters (checked when built), results, timings.

How generated ids become text, stop strings and events is hovle/runtime/output.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import InputError


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
            raise InputError(
                f"unknown sampling parameter(s) {unknown}; expected some of {sorted(cls.__dataclass_fields__)}"
            )
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
