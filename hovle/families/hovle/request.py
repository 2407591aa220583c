"""A request as the runtime sees it: chat messages and images -> token ids of both stacks, tiles, image keys.

The LLM sequence carries 256 IMG_CONTEXT tokens per 448 px tile; HoVLE-HD's embedding module reads a second
sequence of the same prompt with 1024 per tile. `spans_*` locate each image's IMG_CONTEXT run in each sequence and
`image_keys` identify the tiles' content, so KV pages of a prompt prefix can be shared by requests that start with
the same tokens and the same images.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from ...errors import ImageError, InputError
from ...loaders.image import preprocess
from ...loaders.tokenizer import IMG_CONTEXT, Tokenizer
from ...options import MAX_TILES_CAP
from ...prompt import ChatTemplate, build_prompt, place_images
from .config import HoVLEConfig


@dataclass
class Request:
    ids_llm: list[int]
    ids_emb: list[int]
    pixel_values: torch.Tensor | None  # (N_tiles, 3, S, S) float32 on the CPU, all images in prompt order
    tiles: list[int]  # tiles per image, thumbnail included
    grids: list[tuple[int, int]]  # (cols, rows) of each image's tiling, thumbnail not counted
    preprocess_s: float
    paths: list[str]  # image preprocessing paths used ("python", "native-cpu")
    image_keys: list[bytes]  # content hash of each image's pixels and tiling
    spans_llm: list[tuple[int, int]]  # [start, end) of each image's IMG_CONTEXT run in ids_llm
    spans_emb: list[tuple[int, int]]  # the same in ids_emb

    def stack_ids(self, stack: int) -> list[int]:
        """The prompt's ids in KV stack `stack` (0: the embedding module, 1: the LLM)."""
        return self.ids_llm if stack else self.ids_emb

    def stack_spans(self, stack: int) -> list[tuple[int, int]]:
        return self.spans_llm if stack else self.spans_emb


def context_runs(ids: list[int], ctx_id: int) -> list[tuple[int, int]]:
    """[start, end) of every maximal run of `ctx_id` in `ids`, in order (one run per image)."""
    runs, start = [], None
    for i, t in enumerate([*ids, None]):
        if t == ctx_id and start is None:
            start = i
        elif t != ctx_id and start is not None:
            runs.append((start, i))
            start = None
    return runs


def check_tile_budget(max_num, limit: int) -> int:
    if not isinstance(max_num, int) or isinstance(max_num, bool) or not 1 <= max_num <= limit:
        raise InputError(
            f"max_num = {max_num!r}; expected an integer in [1, {limit}] (most tiles per image; the "
            f"limit is the engine's max_tiles, raised with Engine.from_pretrained(max_tiles=...) up "
            f"to {MAX_TILES_CAP})"
        )
    return max_num


class RequestBuilder:
    """Turns messages and images into Requests for one model (config, tokenizer, template)."""

    def __init__(
        self, cfg: HoVLEConfig, tokenizer: Tokenizer, template: ChatTemplate, max_tiles: int, preprocess: str = "auto"
    ):
        self.cfg, self.tokenizer, self.template, self.max_tiles = cfg, tokenizer, template, max_tiles
        self.preprocess = preprocess  # "auto": the native C++ image path when it is built, else PIL

    def build(self, messages: list[dict], images: list, max_num: int | None = None, raw: str | None = None) -> Request:
        """Chat messages (+ images for their placeholders, in order) -> a Request. `raw`: instead of messages, a
        complete prompt string whose control tokens are honoured (the documented opt-in) with "<image>" slots."""
        t0 = time.perf_counter()
        cfg = self.cfg
        default = cfg.max_dynamic_patch if cfg.dynamic_image_size else 1
        max_num = check_tile_budget(min(default, self.max_tiles) if max_num is None else max_num, self.max_tiles)
        segments = self._segments(messages, len(images), raw)
        inputs = [self._image(img, max_num, k) for k, img in enumerate(images)]
        tiles = [x.num_tiles for x in inputs]
        counts_llm = [n * cfg.tokens_per_tile for n in tiles]  # IMG_CONTEXT tokens per image
        ids_llm = self._encode(segments, counts_llm, raw is not None)
        spans_llm = spans_emb = self._image_runs(ids_llm, counts_llm)
        ids_emb = ids_llm
        if cfg.is_hd:
            counts_emb = [n * cfg.emb_tokens_per_tile for n in tiles]
            ids_emb = self._encode(segments, counts_emb, raw is not None)
            spans_emb = self._image_runs(ids_emb, counts_emb)
        return Request(
            ids_llm,
            ids_emb,
            torch.cat([x.pixel_values for x in inputs]) if inputs else None,
            tiles,
            [tuple(x.grid) for x in inputs],
            time.perf_counter() - t0,
            sorted({x.path for x in inputs}),
            [x.key for x in inputs],
            spans_llm,
            spans_emb,
        )

    def describe(self, req: Request) -> list[str]:
        """The prompt as text (each run of image-context tokens as one marker with its count) and each image's
        tiling, for the command line."""
        text = self.tokenizer.decode(req.ids_llm, skip_special_tokens=False)
        ctx = IMG_CONTEXT
        text = re.sub(f"(?:{re.escape(ctx)})+", lambda m: f"{ctx}x{len(m.group(0)) // len(ctx)}", text)
        lines = [f"prompt ({len(req.ids_llm)} LLM tokens, {len(req.ids_emb)} embedding-module tokens):"]
        lines.append("  " + text.replace("\n", "\n  "))
        for i, (grid, n) in enumerate(zip(req.grids, req.tiles)):
            thumb = " + thumbnail" if n > grid[0] * grid[1] else ""
            lines.append(
                f"image {i}: {grid[0]}x{grid[1]} grid of {self.cfg.image_size}px tiles{thumb} = {n} tiles"
                f" (preprocessing: {', '.join(req.paths)}, {req.preprocess_s * 1e3:.1f} ms)"
            )
        return lines

    def _image_runs(self, ids: list[int], expected: list[int]) -> list[tuple[int, int]]:
        """Each image's IMG_CONTEXT run; only a raw prompt can hold the id elsewhere, and that is refused."""
        runs = context_runs(ids, self.cfg.embedding.img_context_token_id)
        if [end - start for start, end in runs] != expected:
            raise InputError(
                f"the raw prompt holds <IMG_CONTEXT> outside the image slots (runs of "
                f"{[end - start for start, end in runs]} tokens where the images give {expected}); "
                'images go where "<image>" is'
            )
        return runs

    def _segments(self, messages, n_images: int, raw: str | None):
        if raw is None:
            return build_prompt(self.template, place_images(messages, n_images))
        if not isinstance(raw, str) or not raw:
            raise InputError(f"a raw prompt must be a non-empty str, got {raw!r}")
        return place_images([{"role": "user", "content": raw}], n_images)[0]["content"]

    def _encode(self, segments, image_tokens: list[int], raw: bool) -> list[int]:
        if not raw:
            return self.tokenizer.encode_prompt(segments, image_tokens)
        # The opt-in: text parts keep their control tokens (the tokenizer's split on specials, as HF does).
        ids = [self.tokenizer.bos_id] if self.tokenizer.add_bos_token else []
        for seg in segments:
            if isinstance(seg, str):
                ids += self.tokenizer.encode(seg, add_bos=False)
            else:
                ids += self.tokenizer.encode_prompt([seg], image_tokens, add_bos=False)
        return ids

    def _image(self, img, max_num: int, k: int):
        cfg = self.cfg
        try:
            return preprocess(
                img,
                image_size=cfg.image_size,
                min_num=min(cfg.min_dynamic_patch, max_num),
                max_num=max_num,
                use_thumbnail=cfg.use_thumbnail,
                dynamic=cfg.dynamic_image_size,
                preprocess=self.preprocess,
            )
        except ImageError as exc:
            raise ImageError(f"image {k}: {exc}") from exc
