"""Counters and latency histograms of the scheduler, read by `Engine.stats()` and the server's /metrics."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1


@dataclass
class Stats:
    requests_finished: int = 0
    requests_failed: int = 0
    requests_cancelled: int = 0
    generated_tokens: int = 0
    prefill_tokens: int = 0  # LLM prompt positions computed
    prefix_hit_tokens: int = 0  # LLM prompt positions taken from cached pages
    prefix_hit_requests: int = 0
    preemptions: int = 0
    decode_steps: int = 0
    ttft: Histogram = field(default_factory=Histogram)
    tpot: Histogram = field(default_factory=Histogram)  # per-token latency after the first
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
