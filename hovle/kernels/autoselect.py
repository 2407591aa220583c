"""The fastest of equivalent implementations, measured on the device once per shape bucket and kept.

Some choices cannot be made from first principles: whether a fused Triton kernel beats cuBLAS plus separate small
kernels at a given decode shape, or which attention backend wins at a given prefill length, depends on the GPU and
the library versions. A `Choice` times each candidate on its first call with a new key (replays of a CUDA graph of
ten calls, median of a few, after a warm-up call that compiles and autotunes: device time, as the captured decode
step pays it), keeps the fastest for that key, and afterwards calls it directly. A candidate that raises is left out
and reported (on stderr and in `failures`, with its exception); a CUDA error is raised at once instead, since it
poisons every later call in the process. It never measures where it cannot (the CPU, inside a CUDA-graph capture):
there the first candidate runs, and a key first seen during a capture keeps that choice.
HOVLE_CHOOSE_<NAME>=<candidate> forces one (tests, benchmarks). `log` holds every measurement; `summary()` every
choice made in this process (benchmark rows carry it).
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable, Hashable

import torch

GRAPH_CALLS = 10  # calls per captured graph: one replay is long enough to time with events


def cuda_timer(fn: Callable[[], object], reps: int = 7) -> float:
    """Median device milliseconds of one fn() call (fn already warmed up), as a CUDA-graph replay runs it: the
    decode step that calls these candidates is replayed from a graph, so launch overhead must not decide. A candidate
    that cannot be captured (a host sync) is timed eagerly between CUDA events instead."""
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            for _ in range(GRAPH_CALLS):
                fn()
    except Exception as exc:  # noqa: BLE001 - not capturable: its eager time is what it costs
        if _is_cuda_fault(exc):
            raise
        torch.cuda.synchronize()
        return _event_ms(fn, reps)
    return _event_ms(graph.replay, reps) / GRAPH_CALLS


def _event_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


_ALL: list[Choice] = []  # every Choice made in this process, for summary()


def summary() -> dict[str, dict[str, str]]:
    """{choice name: {key: chosen candidate}} of every measured choice so far, and {name + ' failed': {key:
    'candidate: exception'}} where a candidate raised: what a benchmark row needs to say which code it timed."""
    out: dict[str, dict[str, str]] = {}
    for c in _ALL:
        if c.chosen:
            out[c.name] = {str(k): v for k, v in c.chosen.items()}
        for key, failed in c.failures.items():
            out.setdefault(c.name + " failed", {})[str(key)] = "; ".join(f"{n}: {e}" for n, e in failed.items())
    return out


def _is_cuda_fault(exc: Exception) -> bool:
    """An error of the CUDA context itself (an illegal address, a launch failure): not a candidate's shortcoming."""
    accelerator_error = getattr(torch, "AcceleratorError", ())
    return (accelerator_error and isinstance(exc, accelerator_error)) or "CUDA error" in str(exc)


class Choice:
    def __init__(self, name: str, candidates: dict[str, Callable], timer: Callable | None = None):
        self.name, self.candidates = name, candidates
        self.timer = timer or cuda_timer
        self.chosen: dict[Hashable, str] = {}
        self.log: dict[Hashable, dict[str, float]] = {}
        self.failures: dict[Hashable, dict[str, str]] = {}  # key -> candidate -> "ExceptionType: message"
        self.calls = dict.fromkeys(candidates, 0)  # which implementation actually ran, how often
        _ALL.append(self)

    def forced(self) -> str | None:
        name = os.environ.get(f"HOVLE_CHOOSE_{self.name.upper()}")
        if name is not None and name not in self.candidates:
            raise ValueError(f"HOVLE_CHOOSE_{self.name.upper()}={name!r}; expected one of {sorted(self.candidates)}")
        return name

    def pick(self, key: Hashable, args: tuple, kwargs: dict, measurable: bool) -> str:
        forced = self.forced()
        if forced is not None:
            return forced
        if key in self.chosen:
            return self.chosen[key]
        first = next(iter(self.candidates))
        if not measurable:
            return first
        times = {}
        for name, fn in self.candidates.items():
            try:
                fn(*args, **kwargs)  # compile and autotune outside the timing
                times[name] = self.timer(lambda fn=fn: fn(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - a candidate that cannot run this shape is not a choice
                if _is_cuda_fault(exc):
                    raise
                self._failed(key, name, exc)
        self.log[key] = times
        self.chosen[key] = min(times, key=times.get) if times else first
        return self.chosen[key]

    def _failed(self, key: Hashable, name: str, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        self.failures.setdefault(key, {})[name] = text
        print(f"autoselect {self.name} {key}: candidate {name!r} left out ({text})", file=sys.stderr, flush=True)

    def __call__(self, key: Hashable, *args, **kwargs):
        name = self.forced() or self.chosen.get(key)  # the per-call path: no device queries once a key is known
        if name is None:
            name = self.pick(key, args, kwargs, _measurable(args))
        self.calls[name] += 1
        return self.candidates[name](*args, **kwargs)


def _measurable(args: tuple) -> bool:
    """Timing is possible: the first tensor argument is on a CUDA device and no graph is being captured."""
    if not torch.cuda.is_available() or torch.cuda.is_current_stream_capturing():
        return False
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    return first is not None and first.device.type == "cuda"
