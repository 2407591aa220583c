"""HoVLE and HoVLE-HD: the holistic embedding module and the InternLM2 LLM on top of it.

Prefill (spec section 3.6b): tiles -> conv-14 patch tokens (+ position embedding). HoVLE ("pre") pixel-shuffles and
projects them to 256 tokens per tile and puts them at the IMG_CONTEXT rows of the text embeddings *before* the
embedding layers; HoVLE-HD ("post") puts the raw 1024 patch tokens per tile there and shuffles/projects the
embedding layers' output at those rows into the LLM's (shorter) sequence. Decode: each new token goes through both
stacks, each with its own KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import Ops
from kernels.patch_embed import weight_layout

from .config import HoVLEConfig
from .errors import InputError, WeightsError
from .kv_cache import KVCache
from .layers import DecoderStack, decode_batch, make_batch, take_layer
from .rope import Rope

EMB = "embedding_model."
LLM = "language_model."
HD_DECODE_MODES = ("natural", "reference-quirk")


@dataclass
class PrefillItem:
    """One sequence to prefill: LLM token ids, embedding-module ids (== ids_llm except for HoVLE-HD), its slot."""

    ids_llm: list[int]
    ids_emb: list[int]
    slot: int


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
    def __init__(self, cfg: HoVLEConfig, weights: dict[str, torch.Tensor], ops: Ops):
        """Takes ownership of `weights` (checkpoint names, already in the run dtype and on the device)."""
        self.cfg, self.ops = cfg, ops
        w = weights
        sample = w[EMB + "llm_text_embeddings.weight"]
        self.dtype, self.device = sample.dtype, sample.device
        self.patch_w = w.pop(EMB + "vision_embeddings.patch_embedding.weight")
        if ops.name == "triton":
            self.patch_w = weight_layout(self.patch_w)  # (C, 3, p, p) stored C-innermost: the kernel's fast layout
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
        self.ctx_id = cfg.embedding.img_context_token_id

    # ---- caches -------------------------------------------------------------------------------------------
    def new_caches(self, num_slots: int, emb_capacity: int, llm_capacity: int) -> tuple[KVCache, KVCache]:
        e, m = self.cfg.embedding.stack, self.cfg.llm.stack
        emb = KVCache(e.num_layers, num_slots, emb_capacity, e.num_kv_heads, e.head_dim, self.dtype, self.device)
        llm = KVCache(m.num_layers, num_slots, llm_capacity, m.num_kv_heads, m.head_dim, self.dtype, self.device)
        return emb, llm

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
        """(N, P, C) -> (N * P/4, C): pixel shuffle, then the projection."""
        return self.project(self.ops.pixel_shuffle(patches, self.cfg.patch_grid))

    def _image_rows(self, pixel_values: torch.Tensor | None, expected: int) -> torch.Tensor | None:
        if expected == 0:
            return None
        if pixel_values is None:
            raise InputError(f"the prompt holds {expected} image-context tokens but no image was given")
        if self.cfg.is_hd:
            patches = self.patch_tokens(pixel_values)  # raw patch tokens go into the embedding layers
            rows = patches.reshape(-1, patches.shape[-1])  # (N, P, C) -> (N P, C)
        else:
            rows = self.project(self.patch_tokens(pixel_values, shuffle=True))
        if rows.shape[0] != expected:
            raise InputError(
                f"the prompt holds {expected} image-context tokens but the {pixel_values.shape[0]} tiles give "
                f"{rows.shape[0]} image embeddings"
            )
        return rows

    # ---- forward ------------------------------------------------------------------------------------------
    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True) if self.cfg.normalize_encoder_output else x

    def _llm_inputs(self, h: torch.Tensor, ids_emb: torch.Tensor, ids_llm: torch.Tensor) -> torch.Tensor:
        """Embedding-module output -> LLM input rows (HD: image rows shuffled/projected, text rows carried over)."""
        if not self.cfg.is_hd:
            return h
        ctx_emb, ctx_llm = ids_emb == self.ctx_id, ids_llm == self.ctx_id
        x = torch.empty(ids_llm.shape[0], h.shape[-1], dtype=h.dtype, device=h.device)
        image = h[ctx_emb]
        if image.shape[0]:
            x[ctx_llm] = self.shuffle_project(image.view(-1, self.cfg.patches_per_tile, h.shape[-1]))
        x[~ctx_llm] = h[~ctx_emb]
        return x

    def prefill(
        self,
        items: list[PrefillItem],
        pixel_values: torch.Tensor | None,
        emb_cache: KVCache,
        llm_cache: KVCache,
        all_logits: bool = False,
    ) -> torch.Tensor:
        """Runs whole prompts (all images' tiles in `pixel_values`, in prompt order) through both stacks.

        Returns fp32 logits: (B, V) for each sequence's last token, or (T_llm, V) for every token.
        """
        ids_emb = torch.tensor([t for it in items for t in it.ids_emb], dtype=torch.int64, device=self.device)
        ids_llm = torch.tensor([t for it in items for t in it.ids_llm], dtype=torch.int64, device=self.device)
        ctx_emb = ids_emb == self.ctx_id
        self._check_pairing(items)
        x = self.text_table[ids_emb]  # (T_emb, C)
        image = self._image_rows(pixel_values, int(ctx_emb.sum()))
        if image is not None:
            x[ctx_emb] = image
        slots = [it.slot for it in items]
        emb_batch = self._batch(self.emb_rope, emb_cache, slots, [len(it.ids_emb) for it in items])
        llm_batch = self._batch(self.llm_rope, llm_cache, slots, [len(it.ids_llm) for it in items])
        h = self.emb_stack.forward(x, emb_batch, emb_cache)
        x = self._normalize(self._llm_inputs(h, ids_emb, ids_llm))
        out = self.llm_stack.forward(x, llm_batch, llm_cache, final_norm=self.final_norm)
        if not all_logits:
            out = out[llm_batch.cu_seqlens[1:].long() - 1]  # last token of each sequence
        return F.linear(out, self.head).float()

    def decode_step(
        self,
        tokens: torch.Tensor,
        slots: torch.Tensor,
        emb_pos: torch.Tensor,
        llm_pos: torch.Tensor,
        emb_cache: KVCache,
        llm_cache: KVCache,
        max_kv: tuple[int, int],
        hd_prompt_lens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One new token per sequence, entirely from device tensors (no host reads: CUDA-graph capturable).

        tokens, slots, emb_pos, llm_pos: (B,) int64; each token is stored at emb_pos / llm_pos of its slot and
        attends to everything before it. hd_prompt_lens (B,): HoVLE-HD "reference-quirk" decoding (spec 3.5): the
        embedding module sees the token at position N_hd - 1, attending to the N_hd prompt keys only, storing
        nothing. max_kv: host-side bounds on the keys attended per stack (launch sizing). Returns logits (B, V).
        """
        x = self.text_table[tokens]  # (B, C)
        if hd_prompt_lens is not None:
            emb_b = decode_batch(self.emb_rope, slots, hd_prompt_lens - 1, hd_prompt_lens, self.dtype, max_kv[0], False)
        else:
            emb_b = decode_batch(self.emb_rope, slots, emb_pos, emb_pos + 1, self.dtype, max_kv[0])
        llm_b = decode_batch(self.llm_rope, slots, llm_pos, llm_pos + 1, self.dtype, max_kv[1])
        h = self._normalize(self.emb_stack.forward(x, emb_b, emb_cache))
        out = self.llm_stack.forward(h, llm_b, llm_cache, final_norm=self.final_norm)
        return F.linear(out, self.head).float()

    def decode(
        self, tokens: torch.Tensor, slots: list[int], emb_cache: KVCache, llm_cache: KVCache, hd_decode: str = "natural"
    ) -> torch.Tensor:
        """Convenience decode from host-side cache lengths (advances them). tokens: (B,). Returns logits (B, V)."""
        quirk = self.cfg.is_hd and hd_decode == "reference-quirk"
        emb_len = [emb_cache.lengths[s] if quirk else emb_cache.reserve(s, 1) for s in slots]
        llm_len = [llm_cache.reserve(s, 1) for s in slots]
        as_t = lambda v: torch.tensor(v, dtype=torch.int64, device=self.device)  # noqa: E731
        max_kv = (max(emb_len) + 1, max(llm_len) + 1)
        hd = as_t(emb_len) if quirk else None
        return self.decode_step(
            tokens.to(self.device), as_t(slots), as_t(emb_len), as_t(llm_len), emb_cache, llm_cache, max_kv, hd
        )

    def _batch(self, rope: Rope, cache: KVCache, slots: list[int], lens: list[int]):
        prefixes = [cache.reserve(s, n) for s, n in zip(slots, lens)]
        return make_batch(rope, slots, prefixes, lens, self.dtype, self.device)

    def _check_pairing(self, items: list[PrefillItem]) -> None:
        for it in items:
            text_emb = sum(t != self.ctx_id for t in it.ids_emb)
            text_llm = sum(t != self.ctx_id for t in it.ids_llm)
            if text_emb != text_llm or (not self.cfg.is_hd and it.ids_emb != it.ids_llm):
                raise InputError(
                    f"slot {it.slot}: embedding and LLM sequences disagree ({text_emb} vs {text_llm} text tokens)"
                )
