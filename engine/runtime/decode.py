"""The decode loop's device side: per-sequence state in device tensors, one step = one (capturable) function.

Everything a step needs lives on the device, indexed by cache slot: the last token, the next cache position of
each stack, the sampling settings and the repetition-penalty mask. A step reads the rows of the running sequences
through a `slots` tensor, runs both stacks, samples and writes the new token and positions back, with no host read
in between. On CUDA each batch-size bucket's step is captured once as a CUDA graph and replayed; sequences that
finish leave the step (the batch is re-bucketed), and padding rows of a bucket point at a scratch cache slot.
Without graphs (CPU, or `cuda_graphs=False`) the same function runs eagerly.
"""

from __future__ import annotations

import warnings

import torch

from .generation import SamplingParams
from .kv_cache import KVCache
from .model import HoVLEModel

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class DecodeRunner:
    def __init__(self, model: HoVLEModel, emb_cache: KVCache, llm_cache: KVCache, quirk: bool, cuda_graphs: bool):
        """The caches' last slot is the scratch slot that padding rows of a bucket write to."""
        self.model, self.emb_cache, self.llm_cache, self.quirk = model, emb_cache, llm_cache, quirk
        n, dev = emb_cache.num_slots, model.device
        self.scratch = n - 1
        zeros = lambda dt: torch.zeros(n, dtype=dt, device=dev)  # noqa: E731
        self.tokens, self.emb_pos, self.llm_pos, self.hd_lens = (zeros(torch.int64) for _ in range(4))
        self.temperature, self.top_p, self.penalty = zeros(torch.float32), zeros(torch.float32), zeros(torch.float32)
        self.top_k = zeros(torch.int64)
        self.seen = torch.zeros(n, model.cfg.llm.vocab_size, dtype=torch.bool, device=dev)
        self.use_penalty = False
        self.all_greedy = True
        self.graphs_on = cuda_graphs and dev.type == "cuda"
        self._graphs: dict[tuple[int, bool, bool], tuple] = {}
        self._pool = None

    # ---- state ---------------------------------------------------------------------------------------------
    def begin(self, slots: list[int], prompts: list[list[int]], params: SamplingParams) -> None:
        """Sets the rows of new sequences after their prefill (positions = the caches' lengths)."""
        dev = self.model.device
        idx = torch.tensor(slots, dtype=torch.int64, device=dev)
        as_t = lambda v, dt=torch.int64: torch.tensor(v, dtype=dt, device=dev)  # noqa: E731
        self.emb_pos[idx] = as_t([self.emb_cache.lengths[s] for s in slots])
        self.hd_lens[idx] = self.emb_pos[idx]
        self.llm_pos[idx] = as_t([self.llm_cache.lengths[s] for s in slots])
        self.temperature[idx] = params.temperature
        self.top_k[idx] = params.top_k
        self.top_p[idx] = params.top_p
        self.penalty[idx] = params.repetition_penalty
        self.use_penalty = params.repetition_penalty != 1.0
        self.all_greedy = params.temperature == 0  # known on the host: a plain argmax, no sort
        self.seen[idx] = False
        if self.use_penalty:
            for s, ids in zip(slots, prompts):
                self.seen[s, as_t(ids)] = True

    def _select(self, logits: torch.Tensor, slots: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        ops = self.model.ops
        if self.use_penalty:
            logits = ops.repetition_penalty(logits, self.seen[slots], self.penalty[slots])
        if self.all_greedy:
            new = ops.greedy(logits)
        else:
            new = ops.sample(logits, self.temperature[slots], self.top_k[slots], self.top_p[slots], uniform)
        self.tokens[slots] = new
        if self.use_penalty:
            self.seen[slots, new] = True
        return new

    def first_tokens(self, logits: torch.Tensor, slots: list[int], uniform: list[float]) -> list[int]:
        """Selects each sequence's first token from its prefill logits (B, V)."""
        dev = self.model.device
        idx = torch.tensor(slots, dtype=torch.int64, device=dev)
        return self._select(logits, idx, torch.tensor(uniform, dtype=torch.float32, device=dev)).tolist()

    # ---- one step ------------------------------------------------------------------------------------------
    def _step(self, slots: torch.Tensor, uniform: torch.Tensor, max_kv: tuple[int, int]) -> torch.Tensor:
        emb_pos, llm_pos = self.emb_pos[slots], self.llm_pos[slots]
        hd = self.hd_lens[slots] if self.quirk else None
        logits = self.model.decode_step(
            self.tokens[slots], slots, emb_pos, llm_pos, self.emb_cache, self.llm_cache, max_kv, hd
        )
        new = self._select(logits, slots, uniform)
        if not self.quirk:
            self.emb_pos[slots] = emb_pos + 1
        self.llm_pos[slots] = llm_pos + 1
        self.emb_pos[self.scratch] = 0  # padding rows keep writing position 0 of the scratch slot
        self.llm_pos[self.scratch] = 0
        return new

    def step(self, slots: list[int], uniform: list[float]) -> list[int]:
        """Advances the sequences in `slots` by one token; returns their new tokens (the one host sync)."""
        for s in slots:
            if not self.quirk:
                self.emb_cache.reserve(s, 1)
            self.llm_cache.reserve(s, 1)
        if self.graphs_on:
            out = self._replay(slots, uniform)
            if out is not None:
                return out
        dev = self.model.device
        max_kv = (
            max(self.emb_cache.lengths[s] for s in slots) + (1 if self.quirk else 0),
            max(self.llm_cache.lengths[s] for s in slots),
        )
        idx = torch.tensor(slots, dtype=torch.int64, device=dev)
        return self._step(idx, torch.tensor(uniform, dtype=torch.float32, device=dev), max_kv).tolist()

    # ---- CUDA graphs ---------------------------------------------------------------------------------------
    def _replay(self, slots: list[int], uniform: list[float]) -> list[int] | None:
        bucket = next((b for b in BUCKETS if b >= len(slots)), None)
        if bucket is None:
            return None
        key = (bucket, self.use_penalty, self.all_greedy)  # a graph holds the selection ops it was captured with
        if key not in self._graphs and not self._capture(key):
            return None
        graph, slot_buf, uniform_buf, out = self._graphs[key]
        pad = bucket - len(slots)
        slot_buf.copy_(torch.tensor(slots + [self.scratch] * pad, dtype=torch.int64), non_blocking=True)
        uniform_buf.copy_(torch.tensor(uniform + [0.0] * pad, dtype=torch.float32), non_blocking=True)
        graph.replay()
        return out[: len(slots)].tolist()

    def _capture(self, key: tuple[int, bool, bool]) -> bool:
        """Captures the step for `bucket` rows (warmed up on the scratch slot, so no real sequence is touched)."""
        bucket, dev = key[0], self.model.device
        slot_buf = torch.full((bucket,), self.scratch, dtype=torch.int64, device=dev)
        uniform_buf = torch.zeros(bucket, dtype=torch.float32, device=dev)
        max_kv = (self.emb_cache.capacity, self.llm_cache.capacity)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # autotuning and allocator warm-up happen outside the capture
                    self._step(slot_buf, uniform_buf, max_kv)
            torch.cuda.current_stream().wait_stream(side)
            self._pool = self._pool or torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._step(slot_buf, uniform_buf, max_kv)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly, and say so once
            warnings.warn(f"CUDA-graph capture failed ({exc}); decoding without graphs", stacklevel=3)
            self.graphs_on = False
            return False
        self._graphs[key] = (graph, slot_buf, uniform_buf, out)
        return True
