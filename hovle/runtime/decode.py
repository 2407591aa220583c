"""One decode step for a batch of rows, and its CUDA graphs (one per batch-size bucket and selection mode).

Everything a step needs is read from device tensors through a `rows` tensor: last token, next position in each
stack, page tables, sampling settings. It runs both stacks, selects the next tokens and writes positions and tokens
back, with no host read, host-to-device copy or tensor built from Python values in between (the CPU test
`tests/runtime/test_capture_safety.py` checks exactly that). On CUDA each (bucket, penalty, greedy) step is captured
once and replayed; padding rows of a bucket point at the scratch row, whose positions are reset to 0 every step. The
common mode (greedy, no penalty) is captured for every bucket when the engine starts (`capture_all`), the others on
first use; captures run in thread-local mode, so another thread's CUDA call (a request being prepared) cannot
invalidate them. When capture fails the error is raised: a caller who asked for graphs gets graphs or an error
(`cuda_graphs=False` decodes eagerly). `replays` and `eager_steps` count which path ran, so tests can assert the
fast one did. The step holds its runner weakly (the runner owns the step), so dropping an engine frees its memory
without waiting for the garbage collector.
"""

from __future__ import annotations

import weakref

import torch

from ..errors import HoVLEError

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class CaptureError(HoVLEError, RuntimeError):
    """The decode step could not be captured as a CUDA graph."""


class DecodeStep:
    def __init__(self, runner, cuda_graphs: bool):
        self.runner = weakref.proxy(runner)
        self.graphs_on = cuda_graphs and runner.model.device.type == "cuda"
        self._graphs: dict[tuple[int, bool, bool], tuple] = {}
        self._pool = None
        self.replays = 0
        self.eager_steps = 0

    def forward(
        self, rows: torch.Tensor, uniform: torch.Tensor, max_kv: tuple[int, ...], penalty: bool, greedy: bool
    ) -> torch.Tensor:
        """The step itself (what gets captured): rows (B,) int64, uniform (B,) -> (2, B) int64 tokens and flags."""
        r = self.runner
        m = r.model
        positions = [pos[rows] for pos in r.positions]
        logits = m.decode(r.tokens[rows], positions, [t[rows] for t in r.tables], r.caches, r.page_size, max_kv)
        out = r.select(logits, rows, uniform, penalty, greedy)
        pad = rows == r.scratch  # padding rows keep writing position 0 of the scratch page
        for k, stack in enumerate(m.stacks):
            if stack.grows_in_decode:
                r.positions[k].index_copy_(0, rows, torch.where(pad, 0, positions[k] + 1))
        return out

    def __call__(
        self, rows: list[int], uniform: list[float], max_kv: tuple[int, ...], penalty: bool, greedy: bool
    ) -> tuple[list[int], list[bool]]:
        """Advances `rows` by one token; returns their new tokens and non-finite flags (the one host sync)."""
        if self.graphs_on:
            out = self._replay(rows, uniform, penalty, greedy)
        else:
            dev = self.runner.model.device
            idx = torch.tensor(rows, dtype=torch.int64).to(dev)
            u = torch.tensor(uniform, dtype=torch.float32).to(dev)
            out = self.forward(idx, u, max_kv, penalty, greedy)[:, : len(rows)]
            self.eager_steps += 1
        new, bad = out.tolist()
        return new, [bool(b) for b in bad]

    # ---- CUDA graphs ---------------------------------------------------------------------------------------
    def capture_all(self, max_rows: int) -> None:
        """Captures the greedy, penalty-free step for every bucket up to `max_rows` rows (at start, not mid-serving)."""
        for bucket in BUCKETS if self.graphs_on else ():
            if (bucket, False, True) not in self._graphs:
                self._graphs[bucket, False, True] = self._capture((bucket, False, True))
            if bucket >= max_rows:
                break

    def close(self) -> None:
        """Drops the captured graphs and their memory pool."""
        self._graphs.clear()
        self._pool = None

    def _replay(self, rows: list[int], uniform: list[float], penalty: bool, greedy: bool) -> torch.Tensor:
        bucket = next((b for b in BUCKETS if b >= len(rows)), None)
        if bucket is None:
            raise CaptureError(f"{len(rows)} rows exceed the largest decode bucket ({BUCKETS[-1]})")
        key = (bucket, penalty, greedy)
        if key not in self._graphs:
            self._graphs[key] = self._capture(key)
        graph, rows_buf, uniform_buf, staging, out = self._graphs[key]
        pad = bucket - len(rows)
        staging[0][:] = torch.tensor(rows + [self.runner.scratch] * pad, dtype=torch.int64)
        staging[1][:] = torch.tensor(uniform + [0.0] * pad, dtype=torch.float32)
        rows_buf.copy_(staging[0], non_blocking=True)
        uniform_buf.copy_(staging[1], non_blocking=True)
        graph.replay()
        self.replays += 1
        return out[:, : len(rows)]

    def _capture(self, key: tuple[int, bool, bool]) -> tuple:
        """Captures the step for `bucket` rows, warmed up on the scratch row (no real sequence is touched)."""
        (bucket, penalty, greedy), r = key, self.runner
        dev = r.model.device
        rows_buf = torch.full((bucket,), r.scratch, dtype=torch.int64, device=dev)
        uniform_buf = torch.zeros(bucket, dtype=torch.float32, device=dev)
        staging = (
            torch.empty(bucket, dtype=torch.int64).pin_memory(),
            torch.empty(bucket, dtype=torch.float32).pin_memory(),
        )
        max_kv = r.capacity
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # compilation, autotuning and allocator warm-up happen outside the capture
                    self.forward(rows_buf, uniform_buf, max_kv, penalty, greedy)
            torch.cuda.current_stream().wait_stream(side)
            self._pool = self._pool or torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = self.forward(rows_buf, uniform_buf, max_kv, penalty, greedy)
        except Exception as exc:
            raise CaptureError(
                f"CUDA-graph capture of the decode step (bucket {bucket}) failed: {exc}; pass cuda_graphs=False "
                "(--no-cuda-graph) to decode without graphs"
            ) from exc
        return graph, rows_buf, uniform_buf, staging, out
