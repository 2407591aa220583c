"""What a sequence's tokens become for its caller: text, stop strings, the finish reason, and typed events.

Text is always re-decoded from all generated ids (so byte-fallback pieces and the tokenizer's space clean-up come
out exactly as a one-shot decode would) and a stream only releases text that can no longer change: the tail that a
later token could still rewrite (clean-up rules, half a UTF-8 character, the start of a stop string, trailing
spaces the final strip would drop) is held back until the sequence ends. So the concatenated stream always equals
the final text.

Events go to the caller's queue (anything with `put`): Token for every generated token (with the text it releases
when streaming), then exactly one of Done (with the finish reason), Failed (with the exception) or, for a scoring
request, Scored followed by Done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

HOLD_BACK = 8  # characters a later token can still rewrite: clean-up patterns are <= 4, a UTF-8 char <= 4


@dataclass(frozen=True)
class Token:
    index: int  # the request's position in its caller's batch
    token: int
    text: str  # the text this token releases to a stream ("" when not streaming or held back)


@dataclass(frozen=True)
class Done:
    index: int
    reason: str  # "stop", "length", "cancelled" or "scored"


@dataclass(frozen=True)
class Failed:
    index: int
    error: BaseException


@dataclass(frozen=True)
class Scored:
    index: int  # a scoring request's prompt logits are ready


Event = Token | Done | Failed | Scored


class SequenceText:
    """Generated ids of one sequence and the text a stream may already show."""

    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...]):
        self.decode, self.stops = decode, stops
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped_text: str | None = None
        self.hold = max([HOLD_BACK] + [len(s) for s in stops])
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


def finish_reason(text: SequenceText, token: int, stop_ids, ignore_eos: bool, max_new: int) -> str | None:
    """Why the sequence ends with `token` (already generated), or None. The end-of-turn token ends it and is not
    part of the output (ids or text), as in the authors' chat(); a stop string ends it with its text cut there;
    `max_new` new tokens end it by length."""
    if token in stop_ids and not ignore_eos:
        return "stop"
    if text.add(token):
        return "stop"
    return "length" if len(text.ids) >= max_new else None
