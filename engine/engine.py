"""The user-facing runtime: `Engine.from_pretrained(path)`, `Engine.generate(...)`, `Engine.chat(...)`.

A request is turned into token ids (chat template, `<image>` placeholders expanded to the tiles' image tokens: the
LLM sequence at 256 per tile, HoVLE-HD's embedding sequence at 1024 per tile) and normalised tiles; a batch is
prefilled in one packed forward and then decoded one token per step for the sequences still running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kernels import get_ops

from .config import HoVLEConfig
from .decode import DecodeRunner
from .errors import InputError, TokenizerError
from .generation import GenerationResult, SamplingParams, SequenceText, Timings, draw_uniforms
from .image import PREPROCESS_PATHS, preprocess
from .model import HD_DECODE_MODES, HoVLEModel, PrefillItem
from .prefix import CachedSequence, reusable_prefix
from .prompt import build_prompt, expand_image_placeholders, get_template, place_images, split_images
from .tokenizer import Tokenizer
from .weights import load_weights

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}  # fmt: skip


@dataclass
class Request:
    ids_llm: list[int]
    ids_emb: list[int]
    pixel_values: torch.Tensor | None
    tiles: list[int]
    grids: list[tuple[int, int]]  # (cols, rows) of each image's tiling, thumbnail not counted
    preprocess_s: float
    paths: list[str]  # image preprocessing paths used ("python", "native-cpu")


def resolve_device_dtype(device: Any, dtype: Any) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} was asked for but torch sees no CUDA device")
    if dtype is None:
        return device, (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise InputError(f"dtype {dtype!r} is not supported; choose one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise InputError(f"dtype {dtype} is not supported; expected float32, bfloat16 or float16")
    return device, dtype


class Stream:
    """Iterates over text deltas of a streamed generation; `results` holds the GenerationResults afterwards."""

    def __init__(self, events: Iterator[tuple[int, str]], single: bool, results: list[GenerationResult]):
        self._events, self._single, self.results = events, single, results  # results fill in as events run out

    def __iter__(self):
        for index, delta in self._events:
            yield delta if self._single else (index, delta)

    @property
    def result(self) -> GenerationResult:
        return self.results[0]


class Engine:
    def __init__(self, cfg: HoVLEConfig, tokenizer: Tokenizer, model: HoVLEModel, hd_decode: str, max_context: int):
        self.cfg, self.tokenizer, self.model = cfg, tokenizer, model
        self.hd_decode, self.max_context = hd_decode, max_context
        self.template = get_template(cfg.template)
        self.cuda_graphs = True
        self.preprocess = "auto"
        self.reuse_prefix = True  # single-sequence requests extending the cached one prefill only their new tokens
        self._cached: CachedSequence | None = None
        self._runner: DecodeRunner | None = None

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
    ) -> Engine:
        """Loads a HoVLE / HoVLE-HD checkpoint folder (config.json, tokenizer files, safetensors shards)."""
        device, dtype = resolve_device_dtype(device, dtype)
        if preprocess not in PREPROCESS_PATHS:
            raise InputError(f"preprocess {preprocess!r} is not supported; choose one of {PREPROCESS_PATHS}")
        if hd_decode not in HD_DECODE_MODES:
            raise InputError(f"hd_decode {hd_decode!r} is not supported; choose one of {HD_DECODE_MODES}")
        cfg = HoVLEConfig.from_dir(path)
        tokenizer = Tokenizer.from_dir(path)
        _check_tokenizer(cfg, tokenizer)
        ops = get_ops(backend, device.type)
        model = HoVLEModel(cfg, load_weights(path, cfg, dtype=dtype, device=device, progress=progress), ops)
        rope = cfg.llm.stack.rope
        # The scaled RoPE variants exist to run past max_position_embeddings, by their factor.
        limit = max_context or int(rope.max_position_embeddings * (rope.factor if rope.scaling else 1))
        if not isinstance(limit, int) or limit < 2:
            raise InputError(f"max_context = {limit!r}; expected an integer >= 2")
        engine = cls(cfg, tokenizer, model, hd_decode, limit)
        engine.cuda_graphs = bool(cuda_graphs)  # used on CUDA only: one captured decode step per batch bucket
        engine.preprocess = preprocess  # "auto": the native C++ image path when it is built, else PIL
        return engine

    # ---- requests -----------------------------------------------------------------------------------------
    def prepare(self, messages: list[dict], images: list | None = None, max_num: int | None = None) -> Request:
        """Chat messages (+ images for their `<image>` placeholders, in order) -> token ids and tiles."""
        t0 = time.perf_counter()
        images = list(images or [])
        messages = place_images(messages, len(images))
        cfg = self.cfg
        max_num = (cfg.max_dynamic_patch if cfg.dynamic_image_size else 1) if max_num is None else max_num
        if not isinstance(max_num, int) or isinstance(max_num, bool) or max_num < 1:
            raise InputError(f"max_num = {max_num!r}; expected an integer >= 1 (most tiles per image)")
        inputs = [
            preprocess(
                img, image_size=cfg.image_size, min_num=min(cfg.min_dynamic_patch, max_num),
                max_num=max_num, use_thumbnail=cfg.use_thumbnail, dynamic=cfg.dynamic_image_size,
                preprocess=self.preprocess,
            )
            for img in images
        ]  # fmt: skip
        tiles = [x.num_tiles for x in inputs]
        prompt = build_prompt(self.template, messages)
        ids_llm = self.tokenizer.encode(expand_image_placeholders(prompt, tiles, cfg.tokens_per_tile))
        ids_emb = ids_llm
        if cfg.is_hd:
            ids_emb = self.tokenizer.encode(expand_image_placeholders(prompt, tiles, cfg.emb_tokens_per_tile))
        pixels = torch.cat([x.pixel_values for x in inputs]) if inputs else None
        grids = [tuple(x.grid) for x in inputs]
        paths = sorted({x.path for x in inputs})
        return Request(ids_llm, ids_emb, pixels, tiles, grids, time.perf_counter() - t0, paths)

    def _check_length(self, req: Request, params: SamplingParams) -> int:
        n = len(req.ids_llm)
        if n >= self.max_context:
            raise InputError(
                f"the prompt has {n} tokens ({sum(req.tiles)} image tiles of {self.cfg.tokens_per_tile} tokens "
                f"included) but the context is {self.max_context} tokens; use fewer tiles (max_num) or a shorter "
                "prompt, or raise max_context"
            )
        return min(params.max_new_tokens, self.max_context - n)

    # ---- generation ---------------------------------------------------------------------------------------
    def generate(
        self,
        prompts: str | list[str],
        images: Any = None,
        *,
        stream: bool = False,
        max_num: int | None = None,
        **sampling,
    ) -> GenerationResult | list[GenerationResult] | Stream:
        """One prompt (a user turn) or a list of them. `images`: for one prompt an image or a list of images;
        for a list of prompts a list with one entry (None, an image or a list of images) per prompt.
        Sampling: max_new_tokens, temperature (0 = greedy), top_k, top_p, repetition_penalty, seed, stop."""
        single = isinstance(prompts, str)
        prompt_list = [prompts] if single else list(prompts)
        if not prompt_list or not all(isinstance(p, str) for p in prompt_list):
            raise InputError("prompts must be a string or a non-empty list of strings")
        image_lists = split_images(images, single, len(prompt_list))
        conversations = [[{"role": "user", "content": p}] for p in prompt_list]
        return self._run(conversations, image_lists, single, stream, max_num, sampling)

    def chat(
        self, messages: list[dict], images: Any = None, *, stream: bool = False, max_num: int | None = None, **sampling
    ) -> GenerationResult | Stream:
        """Multi-turn: messages = [{"role": "user"|"assistant", "content": str}, ...] ending with a user turn."""
        imgs = split_images(images, True, 1)
        return self._run([messages], imgs, True, stream, max_num, sampling)

    def _run(self, conversations, image_lists, single, stream, max_num, sampling):
        params = SamplingParams.build(**sampling)
        start = time.perf_counter()
        requests = [self.prepare(m, imgs, max_num) for m, imgs in zip(conversations, image_lists)]
        budgets = [self._check_length(r, params) for r in requests]
        results: list[GenerationResult] = []
        out = Stream(self._generate_events(requests, budgets, params, start, results, stream), single, results)
        if stream:
            return out
        for _ in out:
            pass
        return out.results[0] if single else out.results

    def _runner_for(self, requests: list[Request], budgets: list[int]) -> DecodeRunner:
        """Caches (one slot per request plus a scratch slot) and their decode runner, reused while they fit."""
        emb_cap = max(len(r.ids_emb) + b for r, b in zip(requests, budgets))
        llm_cap = max(len(r.ids_llm) + b for r, b in zip(requests, budgets))
        slots = len(requests) + 1
        r = self._runner
        if r is None or not (
            r.emb_cache.fits(slots, emb_cap, self.model.dtype) and r.llm_cache.fits(slots, llm_cap, self.model.dtype)
        ):
            self._runner, self._cached = None, None  # free the old allocation (and its graphs) first
            round_up = lambda n: -(-n // 256) * 256  # noqa: E731 - fewer reallocations across requests
            emb, llm = self.model.new_caches(slots, round_up(emb_cap), round_up(llm_cap))
            quirk = self.cfg.is_hd and self.hd_decode == "reference-quirk"
            self._runner = DecodeRunner(self.model, emb, llm, quirk, self.cuda_graphs)
        self._runner.emb_cache.reset()
        self._runner.llm_cache.reset()
        return self._runner

    def _prefill(self, runner: DecodeRunner, requests: list[Request]) -> torch.Tensor:
        """Prefills the batch; a single request extending the cached sequence prefills only its new tokens."""
        cached, self._cached = self._cached, None  # the caches are about to change: valid again only at the end
        reuse = None
        if cached is not None and cached.owner is runner and len(requests) == 1 and self.reuse_prefix:
            if not (self.cfg.is_hd and self.hd_decode == "reference-quirk"):
                r = requests[0]
                reuse = reusable_prefix(self.cfg, cached, r.ids_emb, r.ids_llm, r.pixel_values)
        if reuse is not None:
            (emb, llm), r = reuse, requests[0]
            runner.emb_cache.lengths[0], runner.llm_cache.lengths[0] = emb, llm
            items, pixels = [PrefillItem(r.ids_llm[llm:], r.ids_emb[emb:], 0)], []
        else:
            items = [PrefillItem(r.ids_llm, r.ids_emb, slot) for slot, r in enumerate(requests)]
            pixels = [r.pixel_values for r in requests if r.pixel_values is not None]
        return self.model.prefill(items, torch.cat(pixels) if pixels else None, runner.emb_cache, runner.llm_cache)

    def _generate_events(self, requests, budgets, params: SamplingParams, start: float, results: list, stream: bool):
        """Runs the generation; yields (index, text delta) pairs while streaming, nothing otherwise."""
        runner = self._runner_for(requests, budgets)
        logits = self._prefill(runner, requests)
        active = list(range(len(requests)))
        runner.begin(active, [r.ids_llm for r in requests], params)
        generators = [params.generator() for _ in requests]
        texts = [SequenceText(self.tokenizer.decode, params.stop) for _ in requests]
        finish = [None] * len(requests)
        tokens = runner.first_tokens(logits, active, draw_uniforms(generators, active))
        ttft = time.perf_counter() - start
        decoded, t_first, sampled = 0, time.perf_counter(), [[] for _ in requests]
        while True:
            for slot, tok in zip(active, tokens):
                sampled[slot].append(tok)
                finish[slot] = self._advance(texts[slot], tok, budgets[slot], params.ignore_eos)
                if stream:  # a plain call decodes the text once, at the end
                    yield from ((slot, d) for d in [texts[slot].delta(finish[slot] is not None)] if d)
            active = [s for s in active if finish[s] is None]
            if not active:
                break
            tokens = runner.step(active, draw_uniforms(generators, active))
            decoded += len(active)
        done = time.perf_counter()
        if len(requests) == 1:  # slot 0 now holds the prompt and the tokens fed back: a next turn can extend it
            r, fed = requests[0], sampled[0]
            self._cached = CachedSequence(runner, (r.ids_llm + fed)[: runner.llm_cache.lengths[0]],
                                          (r.ids_emb + fed)[: runner.emb_cache.lengths[0]], r.pixel_values)  # fmt: skip
        for r, t, f in zip(requests, texts, finish):
            timing = Timings(r.preprocess_s, ttft, done - t_first, decoded, done - start)
            results.append(GenerationResult(t.final_text(), t.ids, len(r.ids_llm), f, r.tiles, timing))

    def _advance(self, text: SequenceText, token: int, budget: int, ignore_eos: bool = False) -> str | None:
        """Records `token`; returns the finish reason once the sequence is done. <|im_end|> ends the turn and is not
        part of the output (ids or text), as in the authors' chat()."""
        if token == self.tokenizer.im_end_id and not ignore_eos:
            return "stop"
        if text.add(token):
            return "stop"
        return "length" if len(text.ids) >= budget else None


def _check_tokenizer(cfg: HoVLEConfig, tok: Tokenizer) -> None:
    if tok.img_context_id != cfg.embedding.img_context_token_id:
        raise TokenizerError(
            f"tokenizer files give <IMG_CONTEXT> id {tok.img_context_id} but config.json says "
            f"img_context_token_id {cfg.embedding.img_context_token_id}"
        )
    if tok.vocab_size > cfg.llm.vocab_size:
        raise TokenizerError(f"tokenizer has {tok.vocab_size} ids but the model's vocabulary is {cfg.llm.vocab_size}")
