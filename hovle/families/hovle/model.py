"""HoVLE and HoVLE-HD: the holistic embedding module and the InternLM2 LLM on top of it, as the runtime drives them.

Two KV stacks (Stack.EMBEDDING, Stack.LLM): prefill pushes chunks of prompts through both in packed forwards, and
every decode step takes one token per sequence through both. Tiles -> conv-14 patch tokens (+ position embedding).
HoVLE ("pre") pixel-shuffles and projects them to 256 tokens per tile, which replace the IMG_CONTEXT rows of the
text embeddings *before* the embedding layers; HoVLE-HD ("post") puts the raw 1024 patch tokens per tile there and
shuffles/projects the embedding layers' output at those rows into the LLM's (shorter) sequence. Every generated
token goes through both stacks, each with its own paged KV cache.
"""

from __future__ import annotations

from enum import IntEnum

import torch
import torch.nn.functional as F

from hovle.kernels import Ops

from ...errors import WeightsError
from ...layers.decoder import DecoderStack, StackBatch, decode_batch, prefill_batch, take_layer
from ...layers.rope import Rope
from ...runtime.plan import PrefillWork
from .. import KVStack
from .config import HoVLEConfig
from .prefill import PromptPlan

EMB = "embedding_model."
LLM = "language_model."


class Stack(IntEnum):
    """HoVLE's two KV stacks, in the order the runtime indexes them."""

    EMBEDDING = 0  # the holistic embedding module's layers
    LLM = 1  # the InternLM2 LLM's layers (it produces the tokens)


def _position_table(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + G*G, C) trained table -> (grid*grid, C): drop the unused CLS row, bicubic-resize if grid != G."""
    table = pos[0, 1:]
    trained = int(round(table.shape[0] ** 0.5))
    if trained == grid:
        return table.contiguous()
    c = table.shape[-1]
    square = table.float().reshape(1, trained, trained, c).permute(0, 3, 1, 2)  # (1, C, G, G)
    resized = F.interpolate(square, size=(grid, grid), mode="bicubic", align_corners=False)  # (1, C, g, g)
    return resized.permute(0, 2, 3, 1).reshape(grid * grid, c).to(pos.dtype)  # (1, g, g, C) -> (g*g, C)


class HoVLEModel:
    def __init__(self, cfg: HoVLEConfig, weights: dict[str, torch.Tensor], ops: Ops, hd_decode: str = "natural"):
        """Takes ownership of `weights` (checkpoint names, already in the run dtype and on the device). hd_decode:
        HoVLE-HD's decoding, "natural" or "reference-quirk" (each new token at position N_hd - 1 of the embedding
        module, attending to the prompt only, storing nothing there: what the released code appears to do)."""
        self.cfg, self.ops = cfg, ops
        self.quirk = cfg.is_hd and hd_decode == "reference-quirk"
        self.vocab_size = cfg.llm.vocab_size
        w = weights
        sample = w[EMB + "llm_text_embeddings.weight"]
        self.dtype, self.device = sample.dtype, sample.device
        self.patch_w = ops.patch_weight_layout(w.pop(EMB + "vision_embeddings.patch_embedding.weight"))
        self.patch_b = w.pop(EMB + "vision_embeddings.patch_embedding.bias")
        self.pos = _position_table(w.pop(EMB + "vision_embeddings.position_embedding"), cfg.patch_grid)
        self.text_table = w.pop(EMB + "llm_text_embeddings.weight")
        self.proj = [w.pop(f"{EMB}pixel_shuffle_proj.{i}.{p}") for i in (0, 2) for p in ("weight", "bias")]
        e, m = cfg.embedding.stack, cfg.llm.stack
        emb_layers = [take_layer(w, f"{EMB}encoder.{i}.", e) for i in range(e.num_layers)]
        llm_layers = [take_layer(w, f"{LLM}model.layers.{i}.", m) for i in range(m.num_layers)]
        self.final_norm = w.pop(LLM + "model.norm.weight")
        self.head = w.pop(LLM + "output.weight")
        if w:
            raise WeightsError(f"tensors left unused by the model: {sorted(w)[:10]}")
        self.emb_stack = DecoderStack(e, emb_layers, ops)
        self.llm_stack = DecoderStack(m, llm_layers, ops)
        self.emb_rope = Rope(e.rope, self.device)
        self.llm_rope = Rope(m.rope, self.device)

    # ---- vision -------------------------------------------------------------------------------------------
    def patch_tokens(self, pixel_values: torch.Tensor, shuffle: bool = False) -> torch.Tensor:
        """(N, 3, S, S) normalised tiles -> (N, P, C) patch tokens with position embedding, or with `shuffle`
        directly in the pixel-shuffled layout (N, P/4, 4C) (the shuffle fused into the patch embedding's store)."""
        pixels = pixel_values.to(self.device, self.dtype)
        return self.ops.patch_embed(pixels, self.patch_w, self.patch_b, self.pos, shuffle)

    def project(self, merged: torch.Tensor) -> torch.Tensor:
        """(N, P/4, 4C) shuffled patches -> (N * P/4, C): Linear -> GELU(erf) -> Linear."""
        w0, b0, w2, b2 = self.proj
        merged = merged.reshape(-1, merged.shape[-1])  # (N, P/4, 4C) -> (N P/4, 4C)
        return F.linear(F.gelu(F.linear(merged, w0, b0)), w2, b2)

    def shuffle_project(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, P, C) -> (N * P/4, C): pixel shuffle, then the projection (HoVLE-HD, after the embedding layers)."""
        return self.project(self.ops.pixel_shuffle(patches, self.cfg.patch_grid))

    def image_rows(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What replaces the IMG_CONTEXT rows of the embedding module's input, tile-major: HoVLE (N * P/4, C)
        shuffled and projected; HoVLE-HD (N * P, C) raw patch tokens."""
        if self.cfg.is_hd:
            patches = self.patch_tokens(pixel_values)
            return patches.reshape(-1, patches.shape[-1])  # (N, P, C) -> (N P, C)
        return self.project(self.patch_tokens(pixel_values, shuffle=True))

    # ---- stacks -------------------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(T,) token ids -> (T, C) rows of the embedding module's text table."""
        return self.text_table[ids]

    def emb_forward(self, x: torch.Tensor, batch: StackBatch, cache) -> torch.Tensor:
        """The 8 embedding layers over (T, C) -> their output (no final norm)."""
        return self.emb_stack.forward(x, batch, cache)

    def llm_forward(self, x: torch.Tensor, batch: StackBatch, cache, head: torch.Tensor | None = None) -> torch.Tensor:
        """LLM inputs (T, C) -> final-normed hidden states (T, C), or with `head` the logits (T, V) in the activation
        dtype; normalize_encoder_output applied first."""
        if self.cfg.normalize_encoder_output:
            x = x / x.norm(dim=-1, keepdim=True)  # no epsilon, as the reference
        return self.llm_stack.forward(x, batch, cache, self.final_norm, head)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(T, C) final hidden states -> (T, V) fp32 logits."""
        return F.linear(hidden, self.head).float()

    def decode_step(self, tokens: torch.Tensor, emb: StackBatch, llm: StackBatch, emb_cache, llm_cache):
        """One new token per sequence through both stacks, from device tensors only. tokens (B,) -> logits (B, V)
        (the final norm and the output head go through ops.norm_linear together)."""
        h = self.emb_forward(self.embed(tokens), emb, emb_cache)
        return self.llm_forward(h, llm, llm_cache, self.head).float()

    # ---- the runtime's interface (hovle/families/__init__.py) ---------------------------------------------
    @property
    def stacks(self) -> tuple[KVStack, KVStack]:
        e, m, cfg = self.cfg.embedding.stack, self.cfg.llm.stack, self.cfg
        ratio = cfg.emb_tokens_per_tile // cfg.tokens_per_tile  # embedding positions per LLM position, at most
        # The quirk stores no generated token in the embedding module, and its LLM keys of generated tokens come
        # from that quirk path: not what a prefill of the same ids computes, so never shared.
        return (
            KVStack("embedding", e.num_layers, e.num_kv_heads, e.head_dim, e.rope, ratio, not self.quirk),
            KVStack("llm", m.num_layers, m.num_kv_heads, m.head_dim, m.rope, shares_decoded_pages=not self.quirk),
        )

    def plan_prompt(self, request, generated: list[int], all_logits: bool) -> PromptPlan:
        """The prefill plan of a (re)admitted request; `generated`: tokens it generated before a preemption."""
        return PromptPlan(
            self,
            request.ids_emb + generated,
            request.ids_llm + generated,
            request.spans_emb,
            request.spans_llm,
            request.pixel_values,
            all_logits=all_logits,
        )

    def prefill(self, work: list[PrefillWork], caches, page_size: int) -> list[tuple[tuple[int, int], object]]:
        """Chunks of several prompts in two packed forwards (embedding module, then LLM). Returns per item the
        positions now cached in each stack and the fp32 logits its prompt produced: (1, V) of the last token when
        the prompt is complete, every LLM row for all_logits plans, else None."""
        x = torch.cat([w.plan.emb_inputs(w.start[0], w.end) for w in work])
        batch = prefill_batch(
            self.emb_rope,
            [w.pages[0] for w in work],
            [w.start[0] for w in work],
            [w.end - w.start[0] for w in work],
            [len(w.plan.ids_emb) for w in work],
            page_size,
            self.dtype,
            self.device,
        )
        h = self.emb_forward(x, batch, caches[Stack.EMBEDDING])
        done, parts, offset = [], [], 0
        for i, w in enumerate(work):
            n = w.end - w.start[0]
            l1, inputs = w.plan.take_emb_outputs(w.start[0], w.end, h[offset : offset + n], w.start[1])
            offset += n
            done.append((w.end, l1))
            if inputs is not None:
                parts.append((i, w.start[1], l1, inputs))
        logits: list = [None] * len(work)
        if parts:
            self._llm_prefill(work, parts, caches, page_size, logits)
        return list(zip(done, logits))

    def _llm_prefill(self, work: list[PrefillWork], parts: list, caches, page_size: int, logits: list) -> None:
        plans = [work[i].plan for i, *_ in parts]
        batch = prefill_batch(
            self.llm_rope,
            [work[i].pages[1] for i, *_ in parts],
            [l0 for _, l0, _, _ in parts],
            [l1 - l0 for _, l0, l1, _ in parts],
            [len(p.ids_llm) for p in plans],
            page_size,
            self.dtype,
            self.device,
        )
        hidden = self.llm_forward(torch.cat([x for *_, x in parts]), batch, caches[Stack.LLM])
        offset = 0
        for (i, l0, l1, _), plan in zip(parts, plans):
            rows = hidden[offset : offset + l1 - l0]
            offset += l1 - l0
            if plan.all_logits:
                logits[i] = self.logits(rows)
            elif l1 == len(plan.ids_llm):
                logits[i] = self.logits(rows[-1:])

    def decode(
        self,
        tokens: torch.Tensor,
        positions: list[torch.Tensor],
        tables: list[torch.Tensor],
        caches,
        page_size: int,
        max_kv: tuple[int, int],
    ) -> torch.Tensor:
        """One new token per row through both stacks, from device tensors only: tokens (B,) int64, positions[k] (B,)
        the next position of each row in stack k, tables[k] (B, max_pages) int32 -> (B, V) fp32 logits. Under the
        quirk the embedding module's position does not advance: each token goes at N_hd - 1 and attends to the
        prompt's N_hd keys, storing nothing."""
        emb_pos, llm_pos = positions
        first = emb_pos - 1 if self.quirk else emb_pos
        emb = decode_batch(
            self.emb_rope, tables[0], first, first + 1, page_size, self.dtype, max_kv[0], store=not self.quirk
        )
        llm = decode_batch(self.llm_rope, tables[1], llm_pos, llm_pos + 1, page_size, self.dtype, max_kv[1])
        return self.decode_step(tokens, emb, llm, caches[0], caches[1])
