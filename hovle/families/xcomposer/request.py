"""A request of InternLM-XComposer2-4KHD: chat messages and images -> the LLM's ids, where the image rows sit, the
HD crops.

The prompt is the authors' chat() layout (hovle/prompt.py's "xcomposer2" template: their meta instruction as the
default system message, `[UNUSED_TOKEN_146]role\\n ... [UNUSED_TOKEN_145]\\n` turns). The authors tokenise each text
piece between two images on its own with the tokenizer's default BOS, so every piece starts with BOS
(bos="per-segment", the default); bos="first" puts one BOS at the start only (the gradio demo's choice). An image is
a run of placeholder ids (the unk id: never embedded, the vision features replace those rows); the request's spans
say where, so a generated unk id stays text. The engine's `<image>` placeholder, and the authors' `<ImageHere>`,
mark where images go; without one, each image goes at the start of the first user message, with no newline after it
(as the authors' examples write '<ImageHere>Describe ...').
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import ImageError, InputError
from ...loaders.image import content_key, load_image
from ...loaders.tokenizer import IMAGE_PLACEHOLDER, Tokenizer
from ...prompt import ChatTemplate, ImageSlot, build_prompt, place_images
from ..hovle.request import check_tile_budget
from .config import CROP, XComposerConfig
from .hd import hd_transform

AUTHORS_PLACEHOLDER = "<ImageHere>"
BOS_MODES = ("per-segment", "first")


@dataclass
class Request:
    ids: list[int]
    spans: list[tuple[int, int]]  # [start, end) of each image's rows in ids
    pixel_values: torch.Tensor | None  # (sum(1 + crops), 3, 336, 336) float32 on the CPU: global view, then crops
    grids: list[tuple[int, int]]  # (rows, cols) of each image's crops
    tiles: list[int]  # views per image: 1 + crops
    preprocess_s: float
    paths: list[str]
    image_keys: list[bytes]

    def stack_ids(self, stack: int) -> list[int]:
        return self.ids

    def stack_spans(self, stack: int) -> list[tuple[int, int]]:
        return self.spans


def _authors_placeholders(messages: list, n_images: int) -> list:
    """`<ImageHere>` in text read as the engine's `<image>` when the request has images."""
    if not n_images or not isinstance(messages, list):
        return messages
    out = []
    for m in messages:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            m = dict(m, content=c.replace(AUTHORS_PLACEHOLDER, IMAGE_PLACEHOLDER))
        elif isinstance(c, list):
            m = dict(
                m, content=[p.replace(AUTHORS_PLACEHOLDER, IMAGE_PLACEHOLDER) if isinstance(p, str) else p for p in c]
            )
        out.append(m)
    return out


class RequestBuilder:
    def __init__(
        self,
        cfg: XComposerConfig,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        max_tiles: int,
        bos: str = "per-segment",
        default_hd_num: int = 25,
    ):
        self.cfg, self.tokenizer, self.template, self.max_tiles, self.bos = cfg, tokenizer, template, max_tiles, bos
        self.default_hd_num = min(default_hd_num, max_tiles)

    def build(self, messages: list[dict], images: list, max_num: int | None = None, raw: str | None = None) -> Request:
        """Messages (+ images) -> a Request; max_num is the HD transform's hd_num (crops per image, at most)."""
        t0 = time.perf_counter()
        hd_num = check_tile_budget(self.default_hd_num if max_num is None else max_num, self.max_tiles)
        parts = self._parts(messages, len(images), raw)
        views, keys = [], []
        for k, src in enumerate(images):
            try:
                img = load_image(src)
            except ImageError as exc:
                raise ImageError(f"image {k}: {exc}") from exc
            view = hd_transform(img, hd_num)
            views.append(view)
            keys.append(content_key(np.asarray(img), (view.cols, view.rows), CROP, True))  # grid + pixels fix the views
        ids, spans = self._encode(parts, [self.cfg.image_tokens(v.rows, v.cols) for v in views], raw is not None)
        return Request(
            ids,
            spans,
            torch.cat([v.pixel_values for v in views]) if views else None,
            [(v.rows, v.cols) for v in views],
            [1 + v.crops for v in views],
            time.perf_counter() - t0,
            ["python"] if views else [],
            keys,
        )

    def describe(self, req: Request) -> list[str]:
        """The prompt as text (each image's rows as one marker with its count) and each image's crops."""
        text, prev = [], 0
        for k, (s, e) in enumerate(req.spans):
            text += [self.tokenizer.decode(req.ids[prev:s], skip_special_tokens=False), f"<image {k}: {e - s} rows>"]
            prev = e
        text.append(self.tokenizer.decode(req.ids[prev:], skip_special_tokens=False))
        lines = [f"prompt ({len(req.ids)} LLM tokens):", "  " + "".join(text).replace("\n", "\n  ")]
        for k, ((rows, cols), s) in enumerate(zip(req.grids, req.spans)):
            lines.append(
                f"image {k}: {rows}x{cols} crops of {CROP}px + global view, {s[1] - s[0]} LLM tokens"
                f" (preprocessing: {req.preprocess_s * 1e3:.1f} ms)"
            )
        return lines

    def _parts(self, messages, n_images: int, raw: str | None) -> list:
        """The prompt as segments (text, Special, ImageSlot)."""
        if raw is not None:
            if not isinstance(raw, str) or not raw:
                raise InputError(f"a raw prompt must be a non-empty str, got {raw!r}")
            return place_images(_authors_placeholders([{"role": "user", "content": raw}], n_images), n_images, "")[0][
                "content"
            ]
        placed = place_images(_authors_placeholders(messages, n_images), n_images, after_image="")
        return build_prompt(self.template, placed)

    def _encode(self, segments: list, image_tokens: list[int], raw: bool) -> tuple[list[int], list[tuple[int, int]]]:
        """Text pieces between images, each with its BOS (per the bos mode), and each image as its rows."""
        tok, spans, piece = self.tokenizer, [], []
        ids = [tok.bos_id] if self.bos == "first" else []
        for seg in [*segments, None]:
            if seg is not None and not isinstance(seg, ImageSlot):
                piece.append(seg)
                continue
            if piece:
                bos = self.bos == "per-segment"
                if raw:
                    ids += [tok.bos_id] * bos + [t for s in piece for t in tok.encode(s, add_bos=False)]
                else:
                    ids += tok.encode_prompt(piece, [], add_bos=bos)
                piece = []
            if isinstance(seg, ImageSlot):
                spans.append((len(ids), len(ids) + image_tokens[seg.index]))
                ids += [tok.unk_id] * image_tokens[seg.index]
        return ids, spans
