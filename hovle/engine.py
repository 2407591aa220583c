"""The user-facing runtime: `Engine.from_pretrained(path)`, `generate(...)`, `chat(...)`, `prompt_logits(...)`.

`from_pretrained` finds the model's family from config.json (hovle/families), which loads config, tokenizer and
weights; the runtime around it (hovle/runtime) is the same for every family. A request is turned into token ids
and tiles in the caller's thread (the family's request builder), then handed to the engine's loop
(hovle/runtime/loop.py), which batches every request it has, from any number of callers, continuously on its own
thread: requests join the running batch between decode steps and leave it when they end. `generate` waits for its
own requests' events (or streams them); nothing else is shared between callers, so one Engine may be used from
several threads at once, and an unfinished stream keeps its own buffer while other requests run (see the README's
concurrency contract).
"""

from __future__ import annotations

import dataclasses
import queue
import time
import weakref
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .families import family_for
from .generation import GenerationResult, SamplingParams
from .handles import Handle, Stream
from .kernels import get_ops
from .options import IDLE_CHUNK, EngineOptions
from .prompt import split_images
from .runtime.loop import EngineLoop
from .runtime.output import Done, Failed, Token
from .runtime.page_tables import PageTables
from .runtime.runner import ModelRunner
from .runtime.scheduler import Scheduler
from .runtime.sequence import Sequence
from .runtime.sizing import Sizing


class Engine:
    def __init__(self, loaded, loop: EngineLoop, options: EngineOptions, max_context: int):
        self.cfg, self.tokenizer, self.model, self.builder = loaded.cfg, loaded.tokenizer, loaded.model, loaded.builder
        self.loop, self.options, self.max_context = loop, options, max_context
        self.model_name = loaded.name
        self.scheduler, self.runner = loop.scheduler, loop.runner
        self.template = self.builder.template
        self._finalizer = weakref.finalize(self, loop.close)  # the loop's thread ends with the engine

    @classmethod
    def from_pretrained(cls, path: str | Path, device: Any = None, dtype: Any = None, **options) -> Engine:
        """Loads a checkpoint folder (config.json, tokenizer files, weights) of any family the engine runs.

        Options (hovle/options.py's EngineOptions; the README says what each does): backend, hd_decode,
        max_context, progress, cuda_graphs, preprocess, max_batch, max_queue, max_tiles, kv_cache_memory,
        kv_page_size, prefill_chunk, prefix_caching. Every option is checked before any weight is read."""
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(EngineOptions)})
        if unknown:
            raise InputError(
                f"unknown engine option(s) {unknown}; expected some of "
                f"{[f.name for f in dataclasses.fields(EngineOptions)]}"
            )
        opts = EngineOptions(device=device, dtype=dtype, **options).checked()
        try:
            ops = get_ops(opts.backend, opts.device.type)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        path = Path(path).expanduser()
        loaded = family_for(path).load(path, opts, ops, opts.device, opts.dtype)
        return cls(loaded, *_runtime(loaded, opts, ops))

    def close(self) -> None:
        """Stops the engine's thread (requests still running fail with EngineClosed) and frees the device memory
        (KV caches, CUDA graphs) at once."""
        self._finalizer()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- requests -----------------------------------------------------------------------------------------
    def prepare(self, messages: list[dict], images: list | None = None, max_num: int | None = None):
        """Chat messages (+ images for their `<image>` placeholders, in order) -> token ids and tiles."""
        return self.builder.build(messages, list(images or []), max_num)

    def _max_new(self, req, params: SamplingParams) -> int:
        stacks = range(len(self.model.stacks))
        n = len(req.stack_ids(stacks[-1]))
        if n >= self.max_context:
            raise InputError(
                f"the prompt has {n} tokens ({sum(req.tiles)} image tiles included) but the context is "
                f"{self.max_context} tokens; use fewer tiles (max_num) or a shorter prompt, or raise max_context"
            )
        room = min([self.max_context - n] + [self.runner.capacity[k] - len(req.stack_ids(k)) for k in stacks])
        return max(1, min(params.max_new_tokens, room))

    # ---- generation ---------------------------------------------------------------------------------------
    def generate(
        self,
        prompts: str | list[str],
        images: Any = None,
        *,
        stream: bool = False,
        max_num: int | None = None,
        raw: bool = False,
        **sampling,
    ) -> GenerationResult | list | Stream:
        """One prompt (a user turn) or a list of them. `images`: for one prompt an image or a list of images;
        for a list of prompts a list with one entry (None, an image or a list of images) per prompt. A prompt may
        also be a request from `prepare` (its images are in it already: `images` and `max_num` are then unused).
        Sampling: max_new_tokens, temperature (0 = greedy), top_k, top_p, repetition_penalty, seed, stop,
        ignore_eos. raw=True: each prompt is the complete template text, its control tokens honoured (opt-in)."""
        if hasattr(prompts, "stack_ids") or (
            isinstance(prompts, list) and prompts and hasattr(prompts[0], "stack_ids")
        ):
            requests = [prompts] if hasattr(prompts, "stack_ids") else list(prompts)
            return self._run(requests, hasattr(prompts, "stack_ids"), stream, sampling)
        single = isinstance(prompts, str)
        prompt_list = [prompts] if single else list(prompts) if isinstance(prompts, (list, tuple)) else []
        if not prompt_list or not all(isinstance(p, str) for p in prompt_list):
            raise InputError("prompts must be a string or a non-empty list of strings")
        image_lists = split_images(images, single, len(prompt_list))
        if raw:
            requests = [self.builder.build([], imgs, max_num, raw=p) for p, imgs in zip(prompt_list, image_lists)]
        else:
            requests = [
                self.builder.build([{"role": "user", "content": p}], imgs, max_num)
                for p, imgs in zip(prompt_list, image_lists)
            ]
        return self._run(requests, single, stream, sampling)

    def chat(
        self, messages: list[dict], images: Any = None, *, stream: bool = False, max_num: int | None = None, **sampling
    ) -> GenerationResult | Stream:
        """Multi-turn: messages = [{"role": "user"|"assistant", "content": str}, ...] ending with a user turn (a
        leading {"role": "system"} message replaces the default system message)."""
        imgs = split_images(images, True, 1)[0]
        return self._run([self.builder.build(messages, imgs, max_num)], True, stream, sampling)

    def prompt_logits(self, messages, images: Any = None, max_num: int | None = None):
        """The fp32 logits (T, V) at every position of the prompt (scoring; no token is generated). `messages`
        may also be a request from `prepare` (e.g. with ids appended: the logits of a continuation)."""
        if isinstance(messages, list):
            req = self.builder.build(messages, split_images(images, True, 1)[0], max_num)
        else:
            req = messages
        self._max_new(req, SamplingParams())
        events: queue.SimpleQueue = queue.SimpleQueue()
        seq = Sequence(req, SamplingParams(max_new_tokens=1), 1, events, len(self.model.stacks), all_logits=True)
        self.loop.submit([seq])
        event = events.get()
        if isinstance(event, Failed):
            raise event.error
        return torch.cat(seq.logits)

    def stats(self) -> dict:
        """Scheduler counters, queue and cache occupancy (per KV stack), and which decode path ran (graph replays
        vs eager steps)."""
        s, sched, step = self.scheduler.stats, self.scheduler, self.runner.decoder
        used, total = sched.pages.usage()
        return {
            "waiting": len(sched.waiting),
            "prefilling": len(sched.prefilling),
            "running": len(sched.running),
            "requests_finished": s.requests_finished,
            "requests_failed": s.requests_failed,
            "requests_cancelled": s.requests_cancelled,
            "generated_tokens": s.generated_tokens,
            "prefill_tokens": s.prefill_tokens,
            "prefix_hit_tokens": s.prefix_hit_tokens,
            "prefix_hit_requests": s.prefix_hit_requests,
            "preemptions": s.preemptions,
            "decode_steps": s.decode_steps,
            "graph_replays": step.replays,
            "eager_steps": step.eager_steps,
            "kv_pages_used": used,
            "kv_pages_total": total,
            "kv_stacks": tuple(k.name for k in self.model.stacks),
            "free_rows": len(sched.free_rows),
        }

    def latency(self) -> dict:
        """The latency histograms: "ttft" (submission to first token) and "tpot" (between a sequence's tokens)."""
        return {"ttft": self.scheduler.stats.ttft, "tpot": self.scheduler.stats.tpot}

    def submit(self, requests: list, params: SamplingParams, events, stream: bool = False) -> list[Handle]:
        """Hands requests (from `prepare`) to the engine's loop; it puts hovle.runtime.output events on `events`
        (anything with `put`): Token(index, token, text delta) as tokens come, then Done(index, reason) or
        Failed(index, error). Returns a Handle per request (cancel, result). For servers."""
        max_new = [self._max_new(r, params) for r in requests]
        start = time.perf_counter() - max((r.preprocess_s for r in requests), default=0.0)
        seqs = [
            Sequence(r, params, b, events, len(self.model.stacks), index=i, stream=stream)
            for i, (r, b) in enumerate(zip(requests, max_new))
        ]
        self.loop.submit(seqs)
        return [Handle(seq, self.loop, start) for seq in seqs]

    def cancel(self, handles: list[Handle]) -> None:
        """Cancels submitted requests: their pages and rows are freed at the next step."""
        for handle in handles:
            handle.cancel()

    def _run(self, requests: list, single: bool, stream: bool, sampling: dict):
        params = SamplingParams.build(**sampling)
        events: queue.SimpleQueue = queue.SimpleQueue()
        handles = self.submit(requests, params, events, stream)
        results: list = [None] * len(handles)
        out = Stream(self._events(handles, events, results), single, results)
        if stream:
            return out
        for _ in out:
            pass
        return results[0] if single else results

    def _events(self, handles: list[Handle], events: queue.SimpleQueue, results: list):
        """Yields (index, text delta) while the requests run; fills `results` as they finish."""
        pending = len(handles)
        try:
            while pending:
                event = events.get()
                if isinstance(event, Token) and event.text:
                    yield event.index, event.text
                elif isinstance(event, Done):
                    results[event.index] = handles[event.index].result()
                    pending -= 1
                elif isinstance(event, Failed):
                    raise event.error
        finally:
            if pending:
                self.cancel(handles)


def _runtime(loaded, opts: EngineOptions, ops) -> tuple[EngineLoop, EngineOptions, int]:
    """The runtime around a loaded model: sizing, runner (with its CUDA graphs captured), page tables, scheduler,
    loop."""
    model, tokenizer = loaded.model, loaded.tokenizer
    sizing = Sizing(model, ops, opts.max_context, opts.max_batch, opts.kv_cache_memory, opts.kv_page_size)
    runner = ModelRunner(
        model,
        max_batch=sizing.max_batch,
        num_pages=sizing.num_pages,
        page_size=sizing.page_size,
        max_pages=sizing.max_pages,
        cuda_graphs=opts.cuda_graphs,
        vocab_limit=tokenizer.vocab_size if tokenizer.vocab_size < model.vocab_size else None,
    )
    runner.decoder.capture_all(sizing.max_batch)  # CUDA graphs of the common decode mode, before any request
    chunk = opts.prefill_chunk or (4096 if opts.device.type == "cuda" else 2048)
    pages = PageTables(model.stacks, sizing.num_pages, sizing.page_size, opts.prefix_caching)
    scheduler = Scheduler(
        pages,
        max_batch=sizing.max_batch,
        prefill_chunk=chunk,
        idle_chunk=opts.prefill_chunk or IDLE_CHUNK,
        stop_ids=loaded.stop_ids or (tokenizer.im_end_id,),
        plan_prompt=model.plan_prompt,
        recomputable=all(s.grows_in_decode for s in model.stacks),
    )
    # an id the tokenizer lacks adds no text, never an error
    loop = EngineLoop(scheduler, runner, lambda ids: tokenizer.decode(ids, unknown="skip"), opts.max_queue)
    return loop, opts, sizing.max_context
