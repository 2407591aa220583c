"""HoVLE and HoVLE-HD: the holistic embedding module and the InternLM2 LLM on top of it.

The pieces a forward is made of (spec section 3.6b); the runner (hovle/runtime) decides which tokens go through
them when. Tiles -> conv-14 patch tokens (+ position embedding). HoVLE ("pre") pixel-shuffles and projects them to
256 tokens per tile, which replace the IMG_CONTEXT rows of the text embeddings *before* the embedding layers;
HoVLE-HD ("post") puts the raw 1024 patch tokens per tile there and shuffles/projects the embedding layers' output
at those rows into the LLM's (shorter) sequence. Every generated token goes through both stacks, each with its own
paged KV cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hovle.kernels import Ops

from ..errors import WeightsError
from ..loaders.config import HoVLEConfig
from .layers import DecoderStack, StackBatch, take_layer
from .rope import Rope

EMB = "embedding_model."
LLM = "language_model."
HD_DECODE_MODES = ("natural", "reference-quirk")


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
