"""/metrics in the Prometheus text format: the scheduler's counters, queue, cache and latency histograms.

A prometheus_client collector reads `Engine.stats()` and the scheduler's histograms at each scrape (nothing is
counted twice); tokens/s is the generation rate over the last `window` seconds of scrapes.
"""

from __future__ import annotations

import time
from collections import deque

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily


class EngineCollector:
    def __init__(self, engine, model_name: str, window: float = 10.0):
        self.engine, self.model, self.window = engine, model_name, window
        self._samples: deque[tuple[float, int]] = deque()

    def _rate(self, generated: int) -> float:
        now = time.monotonic()
        self._samples.append((now, generated))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        return (generated - n0) / (now - t0) if now > t0 else 0.0

    def collect(self):
        s = self.engine.stats()
        gauges = {
            "requests_waiting": ("requests in the queue", s["waiting"]),
            "requests_running": ("sequences being prefilled or decoded", s["prefilling"] + s["running"]),
            "generation_tokens_per_second": (
                f"tokens generated per second over the last {self.window:g} s",
                self._rate(s["generated_tokens"]),
            ),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(f"hovle_{name}", doc, value=value)
        counters = {
            "generated_tokens": "tokens generated",
            "prefill_tokens": "prompt tokens computed in prefill",
            "prefix_hit_tokens": "prompt tokens read from cached prefix pages",
            "prefix_hit_requests": "requests that reused cached prefix pages",
            "requests_finished": "requests finished",
            "requests_failed": "requests that failed",
            "requests_cancelled": "requests cancelled",
            "preemptions": "sequences preempted",
            "graph_replays": "decode steps replayed from a CUDA graph",
        }
        for name, doc in counters.items():
            yield CounterMetricFamily(f"hovle_{name}", doc, value=s[name])
        usage = GaugeMetricFamily("hovle_kv_cache_usage_ratio", "fraction of KV pages in use", labels=["stack"])
        for stack, used, total in zip(s["kv_stacks"], s["kv_pages_used"], s["kv_pages_total"]):
            usage.add_metric([stack], used / total)
        yield usage
        latency = self.engine.latency()
        yield _histogram("hovle_time_to_first_token_seconds", "from submission to the first token", latency["ttft"])
        yield _histogram("hovle_time_per_output_token_seconds", "time between a sequence's tokens", latency["tpot"])


def _histogram(name: str, doc: str, h) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for bound, count in zip(h.buckets, h.counts):
        cumulative += count
        buckets.append((f"{bound:g}", cumulative))
    buckets.append(("+Inf", h.n))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.total)
