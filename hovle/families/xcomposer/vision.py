"""The image side of InternLM-XComposer2-4KHD: CLIP ViT-L over the global view and the crops, the 2x2 merge, the
newline / separator tokens, the projector (docs/other-seeds.md §1.4-1.5).

Per image of rows x cols crops, in LLM order:
    global view  12 rows of 12 merged tokens, each row followed by the newline `plora_sub_GN`   12 * 13
    separator    `plora_glb_GN`                                                              1
    crops        stitched into one (rows*12, cols*12) grid, each row then a newline           rows*12 * (cols*12 + 1)
then Linear -> GELU(erf) -> Linear into the LLM's width. The vision features are the last layer's output before
post_layernorm, [CLS] dropped; the merge concatenates [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)] per token,
which is the pixel-shuffle op's channel order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...kernels import Ops
from ...layers.clip import ClipVision
from .config import VIT, XComposerConfig

CROPS_PER_FORWARD = 64  # vision tower batch: bounds its activations (HD-55 is 56 crops per image)


class XComposerVision:
    def __init__(self, cfg: XComposerConfig, weights: dict, ops: Ops):
        """Moves the tower, the projector and the two separator vectors out of `weights`."""
        self.cfg, self.ops = cfg, ops
        self.tower = ClipVision(cfg.vision, weights, VIT, ops)
        self.proj = [weights.pop(f"vision_proj.{i}.{p}") for i in (0, 2) for p in ("weight", "bias")]
        self.sep = weights.pop("plora_glb_GN").reshape(1, -1)  # (1, 4C)
        self.newline = weights.pop("plora_sub_GN").reshape(1, -1)  # (1, 4C)

    def merged(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, 336, 336) crops -> (N, 144, 4C) merged patch features."""
        w = self.tower.patch_w
        pixels = pixel_values.to(w.device, w.dtype)
        parts = []
        for start in range(0, pixels.shape[0], CROPS_PER_FORWARD):
            h = self.tower.forward(pixels[start : start + CROPS_PER_FORWARD])[:, 1:]  # (n, 1 + P, C) -> (n, P, C)
            parts.append(self.ops.pixel_shuffle(h, self.cfg.vision.grid))  # (n, P/4, 4C)
        return torch.cat(parts)

    def with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """(R, S, 4C) token grid -> (R * (S + 1), 4C): each row followed by the newline vector."""
        r = grid.shape[0]
        newline = self.newline.expand(r, 1, -1)  # (R, 1, 4C)
        return torch.cat((grid, newline), dim=1).reshape(-1, grid.shape[-1])  # (R, S+1, 4C) -> (R(S+1), 4C)

    def image_tokens(self, merged: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """One image's merged features (1 + rows*cols, 144, 4C), global view first -> (n_tokens, 4C) in LLM order."""
        side = self.cfg.vision.grid // 2
        width = merged.shape[-1]
        glb = self.with_newlines(merged[0].view(side, side, width))  # (144, 4C) -> (12, 12, 4C)
        crops = merged[1:].view(rows, cols, side, side, width)  # (r c, 144, 4C) -> (r, c, 12, 12, 4C)
        stitched = crops.permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, width)  # (r, 12, c, 12, 4C) -> grid
        return torch.cat((glb, self.sep, self.with_newlines(stitched)))

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, 4C) -> (n, C_llm): Linear -> GELU(erf) -> Linear."""
        w0, b0, w2, b2 = self.proj
        return F.linear(self.ops.gelu(F.linear(tokens, w0, b0), "erf"), w2, b2)

    def features(self, pixel_values: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor:
        """All of a prompt's images, (sum(1 + r*c), 3, 336, 336) in prompt order with their (rows, cols) -> the LLM
        input rows of every image, concatenated in prompt order."""
        merged = self.merged(pixel_values)
        out, start = [], 0
        for rows, cols in grids:
            out.append(self.image_tokens(merged[start : start + 1 + rows * cols], rows, cols))
            start += 1 + rows * cols
        return self.project(torch.cat(out))
