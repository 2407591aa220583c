"""InternLM-XComposer2-4KHD as the runtime drives it: one KV stack (InternLM2-7B with Partial LoRA), the vision side
run once per prompt when its first image row is prefilled (docs/other-seeds.md §1).

Prefill packs chunks of several prompts into one forward; the rows of every image get the PLoRA updates of all
five projections (the im_mask of the authors' code: global view, newlines, separator and crops), computed as small
GEMMs on those row spans. Decode steps carry text tokens only and run the base weights (fused, graph-captured).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import WeightsError
from ...kernels import Ops
from ...layers.decoder import DecoderStack, decode_batch, prefill_batch, take_layer
from ...layers.rope import Rope
from ...runtime.plan import PrefillWork
from .. import KVStack
from .config import LORA_SCALES, XComposerConfig
from .vision import XComposerVision


class PromptPlan:
    """One prompt's prefill: its ids, where its images sit, their pixels, and the image rows once computed."""

    def __init__(self, model: XComposerModel, ids: list[int], spans, pixel_values, grids, all_logits: bool):
        self.model, self.ids, self.spans, self.grids, self.all_logits = model, ids, spans, grids, all_logits
        self.pixel_values = pixel_values
        self._rows: torch.Tensor | None = None  # (image rows, C): every image's projected features, in order
        self._is_img = np.zeros(len(ids), dtype=bool)
        for s, e in spans:
            self._is_img[s:e] = True
        self._img_before = np.concatenate(([0], np.cumsum(self._is_img)))  # image rows before each position

    def resume(self, cached: tuple[int, ...], page_size: int) -> tuple[int, ...]:
        """Where the prefill restarts over `cached` shared positions: whole pages, the last prompt token always
        prefilled (its logits give the first token)."""
        return (min(cached[0], (len(self.ids) - 1) // page_size * page_size),)

    def drop_buffers(self) -> None:
        self._rows = self.pixel_values = None

    def inputs(self, a: int, b: int) -> torch.Tensor:
        """(b - a, C) LLM input rows of positions [a, b): token embeddings, image features on image rows."""
        m = self.model
        x = m.tok_embeddings[torch.tensor(self.ids[a:b], dtype=torch.int64).to(m.device, non_blocking=True)]
        r0, r1 = int(self._img_before[a]), int(self._img_before[b])
        if r1 > r0:
            if self._rows is None:
                self._rows = m.vision.features(self.pixel_values, self.grids)
            x[torch.from_numpy(self._is_img[a:b]).to(m.device)] = self._rows[r0:r1]
        return x

    def lora_spans(self, a: int, b: int, offset: int) -> list[tuple[int, int]]:
        """The image rows among positions [a, b), as spans of the packed batch whose row `offset` is position a."""
        return [(offset + max(s, a) - a, offset + min(e, b) - a) for s, e in self.spans if s < b and e > a]


class XComposerModel:
    def __init__(self, cfg: XComposerConfig, weights: dict[str, torch.Tensor], ops: Ops):
        """Takes ownership of `weights` (checkpoint names, in the run dtype, on the device)."""
        self.cfg, self.ops, self.vocab_size = cfg, ops, cfg.vocab_size
        w = weights
        self.tok_embeddings = w.pop("model.tok_embeddings.weight")
        self.dtype, self.device = self.tok_embeddings.dtype, self.tok_embeddings.device
        self.vision = XComposerVision(cfg, w, ops)
        layers = [take_layer(w, f"model.layers.{i}.", cfg.llm, LORA_SCALES) for i in range(cfg.llm.num_layers)]
        self.final_norm = w.pop("model.norm.weight")
        self.head = w.pop("output.weight")
        if w:
            raise WeightsError(f"tensors left unused by the model: {sorted(w)[:10]}")
        self.stack = DecoderStack(cfg.llm, layers, ops)
        self.rope = Rope(cfg.llm.rope, self.device)

    @property
    def stacks(self) -> tuple[KVStack]:
        s = self.cfg.llm
        return (KVStack("llm", s.num_layers, s.num_kv_heads, s.head_dim, s.rope),)

    def plan_prompt(self, request, generated: list[int], all_logits: bool) -> PromptPlan:
        return PromptPlan(self, request.ids + generated, request.spans, request.pixel_values, request.grids, all_logits)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.head).float()

    def prefill(self, work: list[PrefillWork], caches, page_size: int) -> list[tuple[tuple[int], object]]:
        """Chunks of several prompts in one packed forward. Returns per item (positions now cached,) and the fp32
        logits its prompt produced: (1, V) of the last token when the prompt is complete, every row for all_logits
        plans, else None."""
        parts, spans, offset = [], [], 0
        for w in work:
            a, b = w.start[0], w.end
            parts.append(w.plan.inputs(a, b))
            spans += w.plan.lora_spans(a, b, offset)
            offset += b - a
        batch = prefill_batch(
            self.rope,
            [w.pages[0] for w in work],
            [w.start[0] for w in work],
            [w.end - w.start[0] for w in work],
            [len(w.plan.ids) for w in work],
            page_size,
            self.dtype,
            self.device,
        )
        hidden = self.stack.forward(torch.cat(parts), batch, caches[0], self.final_norm, lora_spans=spans)
        out, offset = [], 0
        for w in work:
            n = w.end - w.start[0]
            rows, logits = hidden[offset : offset + n], None
            offset += n
            if w.plan.all_logits:
                logits = self.logits(rows)
            elif w.end == len(w.plan.ids):
                logits = self.logits(rows[-1:])
            out.append(((w.end,), logits))
        return out

    def decode(self, tokens, positions, tables, caches, page_size: int, max_kv: tuple[int]) -> torch.Tensor:
        """One new text token per row, base weights only, from device tensors (CUDA-graph captured): tokens (B,),
        positions[0] (B,), tables[0] (B, max_pages) -> (B, V) fp32 logits."""
        pos = positions[0]
        batch = decode_batch(self.rope, tables[0], pos, pos + 1, page_size, self.dtype, max_kv[0])
        x = self.tok_embeddings[tokens]
        return self.stack.forward(x, batch, caches[0], self.final_norm, self.head).float()
