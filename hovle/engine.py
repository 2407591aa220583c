"""The user-facing runtime: `Engine.from_pretrained(path)`, `generate(...)`, `chat(...)`, `prompt_logits(...)`.

A request is turned into token ids and tiles in the caller's thread (hovle/request.py), then handed to the
scheduler (hovle/runtime/scheduler.py), which batches every request it has, from any number of callers,
continuously on its own thread: requests join the running batch between decode steps and leave it when they end.
`generate` waits for its own requests' events (or streams them); nothing else is shared between callers, so one
Engine may be used from several threads at once, and an unfinished stream keeps its own buffer while other
requests run (see the README's concurrency contract).
"""

from __future__ import annotations

import queue
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hovle.kernels import get_ops

from .errors import InputError
from .generation import GenerationResult, SamplingParams, Timings
from .loaders.config import HoVLEConfig
from .loaders.image import PREPROCESS_PATHS
from .loaders.tokenizer import Tokenizer
from .loaders.weights import load_weights
from .model.model import HD_DECODE_MODES, HoVLEModel
from .options import IDLE_CHUNK, check_tokenizer, positive_int, resolve_device_dtype
from .prompt import get_template, split_images
from .request import MAX_TILES_CAP, Request, RequestBuilder
from .runtime.decode import BUCKETS
from .runtime.runner import ModelRunner
from .runtime.scheduler import Scheduler
from .runtime.sequence import Sequence
from .runtime.sizing import Sizing, kv_cache_cap


class Stream:
    """Iterates over text deltas of a streamed generation (for a batch: (index, delta) pairs); `results` holds
    the GenerationResults once the iteration is over. Closing it early cancels the requests still running."""

    def __init__(self, events: Iterator[tuple[int, str]], single: bool, results: list):
        self._events, self._single, self.results = events, single, results

    def __iter__(self):
        for index, delta in self._events:
            yield delta if self._single else (index, delta)

    def close(self) -> None:
        self._events.close()

    @property
    def result(self) -> GenerationResult:
        return self.results[0]


class Engine:
    def __init__(self, cfg: HoVLEConfig, tokenizer: Tokenizer, model: HoVLEModel, scheduler: Scheduler,
                 builder: RequestBuilder, hd_decode: str, max_context: int):  # fmt: skip
        self.cfg, self.tokenizer, self.model, self.scheduler = cfg, tokenizer, model, scheduler
        self.builder, self.hd_decode, self.max_context = builder, hd_decode, max_context
        self.runner: ModelRunner = scheduler.runner
        self.template = builder.template
        self._finalizer = weakref.finalize(self, scheduler.close)  # the scheduler thread ends with the engine

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: Any = None,
        dtype: Any = None,
        *,
        backend: str = "auto",
        hd_decode: str = "natural",
        max_context: int | None = None,
        progress: bool | None = None,
        cuda_graphs: bool = True,
        preprocess: str = "auto",
        max_batch: int | None = None,
        max_queue: int = 1024,
        max_tiles: int | None = None,
        kv_cache_memory: int | None = None,
        kv_page_size: int | None = None,
        prefill_chunk: int | None = None,
        prefix_caching: bool = True,
    ) -> Engine:
        """Loads a HoVLE / HoVLE-HD checkpoint folder (config.json, tokenizer files, safetensors shards).

        Every option is checked before any weight is read. See the README for what each one does."""
        device, dtype = resolve_device_dtype(device, dtype)
        if preprocess not in PREPROCESS_PATHS:
            raise InputError(f"preprocess {preprocess!r} is not supported; choose one of {PREPROCESS_PATHS}")
        if hd_decode not in HD_DECODE_MODES:
            raise InputError(f"hd_decode {hd_decode!r} is not supported; choose one of {HD_DECODE_MODES}")
        for name, value in (("max_context", max_context), ("max_batch", max_batch), ("max_queue", max_queue),
                            ("max_tiles", max_tiles), ("kv_cache_memory", kv_cache_memory),
                            ("kv_page_size", kv_page_size), ("prefill_chunk", prefill_chunk)):  # fmt: skip
            positive_int(name, value)
        if max_tiles is not None and max_tiles > MAX_TILES_CAP:
            raise InputError(f"max_tiles = {max_tiles}; the hard cap is {MAX_TILES_CAP} tiles per image")
        if max_context is not None and max_context < 2:
            raise InputError(f"max_context = {max_context!r}; expected an integer >= 2")
        if max_batch is not None and max_batch > BUCKETS[-1]:
            raise InputError(f"max_batch = {max_batch}; at most {BUCKETS[-1]} sequences decode at once")
        kv_cache_cap()  # a bad HOVLE_KV_CACHE_CAP is reported before loading
        try:
            ops = get_ops(backend, device.type)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        cfg = HoVLEConfig.from_dir(path)
        tokenizer = Tokenizer.from_dir(path)
        template = get_template(cfg.template)
        check_tokenizer(cfg, tokenizer, template)
        model = HoVLEModel(cfg, load_weights(path, cfg, dtype=dtype, device=device, progress=progress), ops)
        sizing = Sizing(cfg, model, ops, max_context, max_batch, kv_cache_memory, kv_page_size, hd_decode)
        runner = ModelRunner(model, max_batch=sizing.max_batch, num_pages=sizing.num_pages, page=sizing.page,
                             max_pages=sizing.max_pages, cuda_graphs=bool(cuda_graphs), quirk=sizing.quirk,
                             vocab_limit=tokenizer.vocab_size if tokenizer.vocab_size < cfg.llm.vocab_size else None)
        runner.step.capture_all(sizing.max_batch)  # CUDA graphs of the common decode mode, before any request
        chunk = prefill_chunk or (4096 if device.type == "cuda" else 2048)
        scheduler = Scheduler(runner, tokenizer, max_batch=sizing.max_batch, max_queue=max_queue,
                              prefill_chunk=chunk, idle_chunk=prefill_chunk or IDLE_CHUNK,
                              prefix_caching=bool(prefix_caching))  # fmt: skip
        builder = RequestBuilder(cfg, tokenizer, template, max_tiles or max(cfg.max_dynamic_patch, 1))
        builder.preprocess = preprocess  # "auto": the native C++ image path when it is built, else PIL
        return cls(cfg, tokenizer, model, scheduler, builder, hd_decode, sizing.max_context)

    def close(self) -> None:
        """Stops the scheduler thread (requests still running fail with EngineClosed) and frees the device memory
        (KV caches, CUDA graphs) at once."""
        self._finalizer()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- requests -----------------------------------------------------------------------------------------
    def prepare(self, messages: list[dict], images: list | None = None, max_num: int | None = None) -> Request:
        """Chat messages (+ images for their `<image>` placeholders, in order) -> token ids and tiles."""
        return self.builder.build(messages, list(images or []), max_num)

    def _budget(self, req: Request, params: SamplingParams) -> int:
        n = len(req.ids_llm)
        if n >= self.max_context:
            raise InputError(
                f"the prompt has {n} tokens ({sum(req.tiles)} image tiles of {self.cfg.tokens_per_tile} tokens "
                f"included) but the context is {self.max_context} tokens; use fewer tiles (max_num) or a shorter "
                "prompt, or raise max_context"
            )
        room = min(self.max_context - n, self.runner.capacity[0] - len(req.ids_emb), self.runner.capacity[1] - n)
        return max(1, min(params.max_new_tokens, room))

    # ---- generation ---------------------------------------------------------------------------------------
    def generate(self, prompts: str | list[str], images: Any = None, *, stream: bool = False,
                 max_num: int | None = None, raw: bool = False, **sampling) -> GenerationResult | list | Stream:
        """One prompt (a user turn) or a list of them. `images`: for one prompt an image or a list of images;
        for a list of prompts a list with one entry (None, an image or a list of images) per prompt.
        Sampling: max_new_tokens, temperature (0 = greedy), top_k, top_p, repetition_penalty, seed, stop,
        ignore_eos. raw=True: each prompt is the complete template text, its control tokens honoured (opt-in)."""
        single = isinstance(prompts, str)
        prompt_list = [prompts] if single else list(prompts) if isinstance(prompts, (list, tuple)) else []
        if not prompt_list or not all(isinstance(p, str) for p in prompt_list):
            raise InputError("prompts must be a string or a non-empty list of strings")
        image_lists = split_images(images, single, len(prompt_list))
        if raw:
            requests = [self.builder.build([], imgs, max_num, raw=p) for p, imgs in zip(prompt_list, image_lists)]
        else:
            requests = [self.builder.build([{"role": "user", "content": p}], imgs, max_num)
                        for p, imgs in zip(prompt_list, image_lists)]  # fmt: skip
        return self._run(requests, single, stream, sampling)

    def chat(self, messages: list[dict], images: Any = None, *, stream: bool = False, max_num: int | None = None,
             **sampling) -> GenerationResult | Stream:  # fmt: skip
        """Multi-turn: messages = [{"role": "user"|"assistant", "content": str}, ...] ending with a user turn (a
        leading {"role": "system"} message replaces the default system message)."""
        imgs = split_images(images, True, 1)[0]
        return self._run([self.builder.build(messages, imgs, max_num)], True, stream, sampling)

    def prompt_logits(self, messages: list[dict] | Request, images: Any = None, max_num: int | None = None):
        """The fp32 logits (T, V) at every position of the prompt (scoring; no token is generated). `messages`
        may also be a Request from `prepare` (e.g. with ids appended: the logits of a continuation)."""
        if isinstance(messages, Request):
            req = messages
        else:
            req = self.builder.build(messages, split_images(images, True, 1)[0], max_num)
        self._budget(req, SamplingParams())
        events: queue.SimpleQueue = queue.SimpleQueue()
        seq = Sequence(req, SamplingParams(max_new_tokens=1), 1, events, all_logits=True)
        self.scheduler.submit([seq])
        _, kind, payload = events.get()
        if kind == "error":
            raise payload
        return torch.cat(seq.logits)

    def stats(self) -> dict:
        """Scheduler counters, queue and cache occupancy, and which decode path ran (graph replays vs eager)."""
        s, sched = self.scheduler.stats, self.scheduler
        pools = sched.pages.pools
        return {
            "waiting": len(sched.waiting), "prefilling": len(sched.prefilling), "running": len(sched.running),
            "requests_finished": s.requests_finished, "requests_failed": s.requests_failed,
            "requests_cancelled": s.requests_cancelled, "generated_tokens": s.generated_tokens,
            "prefill_tokens": s.prefill_tokens, "prefix_hit_tokens": s.prefix_hit_tokens,
            "prefix_hit_requests": s.prefix_hit_requests, "preemptions": s.preemptions,
            "decode_steps": s.decode_steps, "graph_replays": self.runner.step.replays,
            "eager_steps": self.runner.step.eager_steps,
            "kv_pages_used": (pools[0].num_used, pools[1].num_used),
            "kv_pages_total": (pools[0].num_blocks - 1, pools[1].num_blocks - 1),
        }  # fmt: skip

    def submit(self, requests: list[Request], params: SamplingParams, events, stream: bool = False) -> list:
        """Hands requests to the scheduler; it puts (index, kind, payload) on `events` (anything with `put`):
        ("token", (id, text delta)), then ("done", finish reason) or ("error", exception). For servers."""
        budgets = [self._budget(r, params) for r in requests]
        seqs = [Sequence(r, params, b, events, index=i, stream=stream)
                for i, (r, b) in enumerate(zip(requests, budgets))]  # fmt: skip
        self.scheduler.submit(seqs)
        return seqs

    def cancel(self, seqs: list) -> None:
        """Cancels submitted requests: their pages and rows are freed at the next step."""
        self.scheduler.cancel(seqs)

    def _run(self, requests: list[Request], single: bool, stream: bool, sampling: dict):
        params = SamplingParams.build(**sampling)
        start = time.perf_counter() - max((r.preprocess_s for r in requests), default=0.0)
        events: queue.SimpleQueue = queue.SimpleQueue()
        seqs = self.submit(requests, params, events, stream)
        results: list = [None] * len(seqs)
        out = Stream(self._events(seqs, events, results, start), single, results)
        if stream:
            return out
        for _ in out:
            pass
        return results[0] if single else results

    def _events(self, seqs: list[Sequence], events: queue.SimpleQueue, results: list, start: float):
        """Yields (index, text delta) while the requests run; fills `results` as they finish."""
        pending = len(seqs)
        try:
            while pending:
                index, kind, payload = events.get()
                if kind == "token" and payload[1]:
                    yield index, payload[1]
                elif kind == "done":
                    results[index] = result_of(seqs[index], start)
                    pending -= 1
                elif kind == "error":
                    raise payload
        finally:
            if pending:
                self.scheduler.cancel(seqs)


def result_of(seq: Sequence, start: float) -> GenerationResult:
    """The GenerationResult of a finished sequence (`start`: when the caller's request began)."""
    req = seq.request
    t_first = seq.t_first or seq.t_done
    timing = Timings(req.preprocess_s, t_first - start, seq.t_done - t_first, max(len(seq.generated) - 1, 0),
                     seq.t_done - start)  # fmt: skip
    return GenerationResult(seq.text.final_text(), seq.text.ids, len(req.ids_llm), seq.finish_reason, req.tiles,
                            timing, seq.reused[1])  # fmt: skip
