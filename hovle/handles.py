"""What a caller holds while its requests run: a Handle per submitted request (cancel, result) and, when streaming,
a Stream of text deltas; and how a finished sequence becomes its GenerationResult."""

from __future__ import annotations

from collections.abc import Iterator

from .errors import InputError
from .generation import GenerationResult, Timings
from .runtime.loop import EngineLoop
from .runtime.sequence import Sequence


class Stream:
    """Iterates over text deltas of a streamed generation (for a batch: (index, delta) pairs); `results` holds
    the GenerationResults once the iteration is over (`result` is the only one of a single prompt). Closing it
    early cancels the requests still running."""

    def __init__(self, events: Iterator[tuple[int, str]], single: bool, results: list):
        self._events, self._single, self.results = events, single, results

    def __iter__(self):
        for index, delta in self._events:
            yield delta if self._single else (index, delta)

    def close(self) -> None:
        self._events.close()

    @property
    def result(self) -> GenerationResult:
        """The result of a single prompt's stream (a batch's are `results`)."""
        if not self._single:
            raise InputError(f"this stream holds {len(self.results)} results, one per prompt: use stream.results")
        return self.results[0]


class Handle:
    """A submitted request: `cancel()` it at any time; `result()` once its Done event has arrived."""

    def __init__(self, seq: Sequence, loop: EngineLoop, start: float):
        self._seq, self._loop, self._start = seq, loop, start

    @property
    def index(self) -> int:
        return self._seq.index

    def cancel(self) -> None:
        self._loop.cancel([self._seq])

    def result(self) -> GenerationResult:
        return result_of(self._seq, self._start)


def result_of(seq: Sequence, start: float) -> GenerationResult:
    """The GenerationResult of a finished sequence (`start`: when the caller's request began)."""
    req = seq.request
    t_first = seq.t_first or seq.t_done
    timing = Timings(
        req.preprocess_s, t_first - start, seq.t_done - t_first, max(len(seq.generated) - 1, 0), seq.t_done - start
    )
    return GenerationResult(
        seq.text.final_text(),
        seq.text.ids,
        len(req.stack_ids(seq.stacks - 1)),
        seq.finish_reason,
        req.tiles,
        timing,
        seq.reused[-1],
    )
