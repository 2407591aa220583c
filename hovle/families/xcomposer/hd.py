"""The HD-N dynamic partition of InternLM-XComposer2-4KHD (docs/other-seeds.md §1.3): an image of any size becomes a
global 336 px view and up to N 336 px crops.

1. Portrait images (w < h) are transposed so that width >= height; the result is transposed back at the end.
2. The column count s is the largest with s * ceil(s / ratio) <= N (ratio = w / h): the image is rescaled, up or
   down, to width 336 s and height int(336 s / ratio) with PIL's bilinear filter.
3. Only the height is padded, with white, to the next multiple of 336: floor(pad / 2) rows on top, the rest below.
4. /255 and CLIP's mean / std; crops are the 336 px tiles in row-major order; the global view is the whole padded,
   normalised image resized to 336 x 336 by torch's bicubic interpolation (align_corners False, no antialias, fp32),
   which squashes its aspect ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import CROP

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class HDImage:
    pixel_values: torch.Tensor  # (1 + rows * cols, 3, 336, 336) float32: the global view, then the crops row-major
    rows: int
    cols: int

    @property
    def crops(self) -> int:
        return self.rows * self.cols


def columns(ratio: float, hd_num: int) -> int:
    """The largest s >= 1 with s * ceil(s / ratio) <= hd_num (ratio = width / height >= 1)."""
    s = 1
    while (s + 1) * math.ceil((s + 1) / ratio) <= hd_num:
        s += 1
    return s


def resized_size(width: int, height: int, hd_num: int) -> tuple[int, int]:
    """(width, height) of the rescaled, not yet padded image, for an image already in landscape orientation."""
    ratio = width / height
    new_w = columns(ratio, hd_num) * CROP
    return new_w, max(1, int(new_w / ratio))  # >= 1: a 10000 x 1 strip would round to no rows (the authors crash)


def hd_transform(img: Image.Image, hd_num: int) -> HDImage:
    """An RGB PIL image -> its global view and crops (see the module docstring)."""
    portrait = img.width < img.height
    if portrait:
        img = img.transpose(Image.Transpose.TRANSPOSE)
    new_w, new_h = resized_size(img.width, img.height, hd_num)
    resized = np.asarray(img.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8)  # (h, W, 3)
    target = math.ceil(new_h / CROP) * CROP
    top = (target - new_h) // 2
    padded = np.full((target, new_w, 3), 255, dtype=np.uint8)
    padded[top : top + new_h] = resized
    if portrait:
        padded = padded.transpose(1, 0, 2)  # (H, W, 3) -> (W, H, 3): back to the original orientation
    x = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1).float() / 255.0  # (H, W, 3) -> (3, H, W)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    x = (x - mean) / std
    rows, cols = x.shape[1] // CROP, x.shape[2] // CROP
    crops = x.reshape(3, rows, CROP, cols, CROP).permute(1, 3, 0, 2, 4).reshape(-1, 3, CROP, CROP)  # (r c, 3, S, S)
    glb = F.interpolate(x[None], size=(CROP, CROP), mode="bicubic", align_corners=False)  # (1, 3, S, S)
    return HDImage(torch.cat((glb, crops)), rows, cols)
