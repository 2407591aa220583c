"""The runtime every model family runs on: the engine loop (its thread), the scheduler (plans), the runner (the
device: KV caches, prefill, decode step and its CUDA graphs, token selection), KV page bookkeeping with prefix
sharing, sizing, and what tokens become for callers (text, stop strings, events)."""
