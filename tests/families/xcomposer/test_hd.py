"""The HD transform bit-exact against the independent implementation of the authors' HD_transform + ToTensor +
Normalize (hovle/reference/xcomposer.py), on a table of sizes and budgets; the crop split and the global view
(torch bicubic) too; and the image token counts the authors' code asserts."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hovle.families.xcomposer.hd import columns, hd_transform
from hovle.reference.xcomposer import hd_transform as authors_hd_transform

SIZES = [
    (1000, 1000),
    (640, 480),
    (480, 640),
    (1, 1),
    (13, 7),
    (7, 13),
    (3840, 2160),
    (2160, 3840),
    (2000, 3),
    (3, 2000),
]


def _image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.BICUBIC)  # smooth but not flat, as photos are


CASES = [(size, n) for size in SIZES for n in (1, 9, 25)] + [((3840, 2160), 55), ((2160, 3840), 55), ((800, 600), 65)]


@pytest.mark.parametrize("size, hd_num", CASES, ids=str)
def test_views_equal_the_authors_transform_bit_for_bit(size, hd_num):
    img = _image(*size, seed=hash((size, hd_num)) % 1000)
    ours = hd_transform(img, hd_num)
    try:
        full = authors_hd_transform(img, hd_num)  # (3, H, W)
    except ValueError:  # a strip so thin that the authors resize it to zero rows; the engine keeps one row
        ratio = max(size) / min(size)
        assert int(columns(ratio, hd_num) * 336 / ratio) == 0  # that is the only way the authors' code fails
        assert (ours.rows, ours.cols) in ((1, hd_num), (hd_num, 1))
        return
    h, w = full.shape[1] // 336, full.shape[2] // 336
    assert (ours.rows, ours.cols) == (h, w) and h * w <= hd_num
    crops = full.reshape(1, 3, h, 336, w, 336).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, 336, 336)
    glb = F.interpolate(full[None].float(), size=(336, 336), mode="bicubic")
    assert torch.equal(ours.pixel_values, torch.cat((glb, crops)))


def test_the_budget_is_filled_and_never_exceeded():
    for ratio in (0.01, 0.3, 1.0, 1.7, 2.5, 11.0, 300.0):
        for n in range(1, 70):
            s = columns(max(ratio, 1.0), n)
            r = max(ratio, 1.0)
            assert s * np.ceil(s / r) <= n and (s + 1) * np.ceil((s + 1) / r) > n


def test_portrait_is_the_transposed_landscape():
    img = _image(300, 700, 3)
    a, b = hd_transform(img, 16), hd_transform(img.transpose(Image.Transpose.TRANSPOSE), 16)
    assert (a.rows, a.cols) == (b.cols, b.rows)
    crops_a = a.pixel_values[1:].view(a.rows, a.cols, 3, 336, 336)
    crops_b = b.pixel_values[1:].view(b.rows, b.cols, 3, 336, 336)
    assert torch.equal(crops_a, crops_b.permute(1, 0, 2, 4, 3))  # tile (r, c) of one is tile (c, r) of the other


def test_image_token_counts(xc_engine):
    cfg = xc_engine.cfg
    assert cfg.image_tokens(1, 1) == 313 and cfg.image_tokens(5, 5) == 3817 and cfg.image_tokens(5, 11) == 8137
    req = xc_engine.prepare([{"role": "user", "content": "What is it?"}], [_image(1000, 1000, 1)], 25)
    assert req.grids == [(5, 5)] and [e - s for s, e in req.spans] == [3817] and req.tiles == [26]
