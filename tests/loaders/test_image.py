"""Tests for hovle/loaders/image.py, in order: tiling decisions, bit-exact pixels, modes, input kinds, bad inputs."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from hovle.errors import ImageError
from hovle.kernels.preprocess import preprocess_tiles_ref
from hovle.loaders.image import choose_grid, load_image, preprocess

S = 448
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EXAMPLE = Path(__file__).resolve().parents[2] / "hovle" / "data" / "example.png"


def noise_rgb(w, h, seed=0):
    """Photo-like: a smooth gradient plus seeded noise, never constant."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 200 / max(w, 1), yy * 200 / max(h, 1), (xx + yy) * 100 / max(w + h, 1)], axis=-1)
    return np.clip(base + rng.integers(0, 56, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def grid_bruteforce(w, h, max_num, min_num=1, size=S):
    """Independent rule: among all grids at the minimal float |W/H - i/j|, the largest-area one that the image
    can fill (2*W*H > size^2*i*j, exact integers) wins, otherwise the smallest-area one."""
    grids = [(i, j) for i in range(1, max_num + 1) for j in range(1, max_num + 1) if min_num <= i * j <= max_num]
    best = min(abs(w / h - i / j) for i, j in grids)
    tied = sorted((g for g in grids if abs(w / h - g[0] / g[1]) == best), key=lambda g: g[0] * g[1])
    # Equal-area ties would depend on scan order; the cases below never produce one, and this guards that.
    assert len({g[0] * g[1] for g in tied}) == len(tied), tied
    fillable = [g for g in tied if 2 * w * h > size * size * g[0] * g[1]]
    return fillable[-1] if fillable else tied[0]


# fmt: off
TABLE = [
    (448, 448, 12), (896, 896, 12), (1344, 1344, 12), (200, 200, 12), (5000, 5000, 12), (1000, 1000, 6),
    (1, 2000, 12), (2000, 1, 12), (1, 1, 12), (13, 7, 12), (4032, 3024, 12), (4032, 3024, 6), (3024, 4032, 12),
    (1024, 768, 12), (1024, 768, 6), (800, 600, 1), (800, 600, 6), (800, 600, 12), (2000, 1000, 12),
    (896, 448, 12), (900, 450, 12), (1000, 500, 6), (600, 300, 12), (1792, 896, 12), (1000, 2000, 12),
    (3000, 1000, 12), (300, 100, 12), (1920, 1080, 12), (1080, 1920, 12), (1280, 720, 6), (640, 480, 12),
    (500, 1200, 3), (333, 777, 24), (1000, 1000, 1), (1500, 500, 9), (640, 480, 40), (7, 13, 2),
    (1008, 896, 12), (896, 1008, 12), (2048, 588, 12), (1024, 882, 9),  # area exactly at a tie threshold
]
# fmt: on


@pytest.mark.parametrize("w,h,max_num", TABLE)
def test_grid_matches_bruteforce_table(w, h, max_num):
    assert choose_grid(w, h, min_num=1, max_num=max_num, image_size=S) == grid_bruteforce(w, h, max_num)


def test_grid_matches_bruteforce_sweep():
    for max_num, min_num in [(1, 1), (6, 1), (12, 1), (24, 1), (12, 2)]:
        for w in range(1, 4000, 163):
            for h in range(1, 4000, 149):
                got = choose_grid(w, h, min_num=min_num, max_num=max_num, image_size=S)
                assert got == grid_bruteforce(w, h, max_num, min_num), (w, h, max_num, min_num)


HAND = [  # (W, H, max_num, expected (cols, rows)); "fills" below means W*H > 0.5*448^2*cols*rows
    (448, 448, 12, (1, 1)),  # (1,1), (2,2), (3,3) all diff 0; 448^2 does not fill (2,2), so (1,1) stays
    (896, 896, 12, (2, 2)),  # 4*448^2 fills (2,2) (> 2*448^2) but not (3,3) (needs > 4.5*448^2)
    (2000, 1000, 12, (4, 2)),  # 2:1: (2,1) diff 0; (4,2) ties and 2e6 > 0.5*448^2*8 = 802816 fills it
    (896, 448, 12, (2, 1)),  # 2:1 again, but 401408 <= 802816: the tie keeps the smaller (2,1)
    (1008, 896, 12, (2, 2)),  # all n:n tie; 903168 fills (2,2) but EQUALS 0.5*448^2*9: not >, so no (3,3)
    (1024, 768, 12, (4, 3)),  # 4:3 exact at product 12
    (1024, 768, 6, (3, 2)),  # products <= 6: 3/2 is closest to 1.333 (diff 0.167 vs 0.333 for 1/1)
    (1, 2000, 12, (1, 12)),  # aspect 0.0005: the narrowest candidate 1/12
    (2000, 1, 12, (12, 1)),  # aspect 2000: the widest candidate 12/1
    (800, 600, 1, (1, 1)),  # max_num 1 leaves only (1,1)
    # 5/12 is exactly halfway between 1/3 and 1/2, but in floats |5/12 - 1/2| = 0.08333333333333331 <
    # |5/12 - 1/3| = 0.08333333333333337: no tie, so (1,2), where exact arithmetic would pick (1,3).
    (500, 1200, 3, (1, 2)),
]


@pytest.mark.parametrize("w,h,max_num,expected", HAND)
def test_grid_hand_computed(w, h, max_num, expected):
    assert choose_grid(w, h, min_num=1, max_num=max_num, image_size=S) == expected


@pytest.mark.parametrize("min_num,max_num", [(0, 12), (5, 4), (-1, 3), (1, 0)])
def test_grid_rejects_bad_bounds(min_num, max_num):
    with pytest.raises(ImageError, match=f"min_num={min_num}, max_num={max_num}"):
        choose_grid(100, 100, min_num=min_num, max_num=max_num, image_size=S)
    with pytest.raises(ImageError, match=f"min_num={min_num}, max_num={max_num}"):
        preprocess(noise_rgb(8, 8), min_num=min_num, max_num=max_num)


def reference_pixels(img, max_num, size=S, use_thumbnail=True):
    """The README path written out by hand: default-filter PIL resize, crops, ToTensor, per-channel Normalize."""
    cols, rows = grid_bruteforce(img.width, img.height, max_num, size=size)
    big = img.resize((cols * size, rows * size))
    tiles = [big.crop((c * size, r * size, (c + 1) * size, (r + 1) * size)) for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(img.resize((size, size)))
    out = []
    for tile in tiles:
        x = torch.from_numpy(np.array(tile)).permute(2, 0, 1).float() / 255  # (S, S, 3) -> (3, S, S)
        for c in range(3):
            x[c] = (x[c] - MEAN[c]) / STD[c]
        out.append(x)
    return torch.stack(out)


# One grid per tile count 1..12. Side k = 320 > 448/sqrt(2), so the image fills the largest same-ratio grid
# that max_num = cols*rows allows; ODD adds extreme aspect ratios and tiny images.
GRIDS = [(1, 1), (2, 1), (3, 1), (2, 2), (5, 1), (3, 2), (7, 1), (4, 2), (3, 3), (5, 2), (11, 1), (4, 3)]
ODD = [(1, 2000, 12), (2000, 1, 12), (1, 1, 12), (13, 7, 12), (1000, 750, 6), (2000, 1000, 12), (777, 333, 12)]
PIXEL_CASES = [(c * 320, r * 320, c * r) for c, r in GRIDS] + ODD + [(640, 480, 1)]


def test_pixel_cases_cover_every_tile_count():
    grids = [grid_bruteforce(w, h, n) for w, h, n in PIXEL_CASES[:12]]
    assert grids == GRIDS and [c * r for c, r in grids] == [*range(1, 13)]


@pytest.mark.parametrize("w,h,max_num", PIXEL_CASES)
def test_pixels_exact(w, h, max_num):
    img = Image.fromarray(noise_rgb(w, h, seed=w * 7 + h))
    out = preprocess(img, max_num=max_num)
    cols, rows = grid_bruteforce(w, h, max_num)
    assert (out.grid, out.size, out.num_tiles) == ((cols, rows), (w, h), cols * rows + (cols * rows > 1))
    assert out.pixel_values.dtype == torch.float32 and out.pixel_values.shape == (out.num_tiles, 3, S, S)
    assert torch.equal(out.pixel_values, reference_pixels(img, max_num))


def test_no_thumbnail_and_not_dynamic():
    img = Image.fromarray(noise_rgb(1400, 700, seed=3))
    out = preprocess(img, use_thumbnail=False)
    assert out.grid == (4, 2) and out.num_tiles == 8
    assert torch.equal(out.pixel_values, reference_pixels(img, 12, use_thumbnail=False))
    single = preprocess(img, dynamic=False)
    assert single.grid == (1, 1) and single.num_tiles == 1
    assert torch.equal(single.pixel_values, reference_pixels(img, 1))


def test_the_tile_spec_is_the_independent_pixels():
    """hovle.kernels.preprocess.preprocess_tiles_ref (the one spec both paths follow) against this file's own PIL +
    torch computation."""
    img = Image.fromarray(noise_rgb(300, 200, seed=9))
    grid = choose_grid(300, 200, min_num=1, max_num=6, image_size=56)
    assert torch.equal(preprocess_tiles_ref(np.asarray(img), grid, 56, True), reference_pixels(img, 6, size=56))


def test_example_image():
    out = preprocess(EXAMPLE)  # 4:3 -> (4, 3) exactly, 12 tiles + thumbnail
    assert (out.size, out.grid, out.num_tiles, EXAMPLE.stat().st_size < 60_000) == ((640, 480), (4, 3), 13, True)


def assert_matches_convert(img, **save_kw):
    """load_image(img) == img.convert("RGB"), both in memory and through an encoded PNG (the reference opens files)."""
    np.testing.assert_array_equal(np.asarray(load_image(img)), np.asarray(img.convert("RGB")))
    data = encode(img, **save_kw)
    np.testing.assert_array_equal(np.asarray(load_image(data)), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_modes_with_alpha_drop_alpha():
    rgba = noise_rgb(31, 17, seed=1)
    rgba = np.concatenate([rgba, rgba[:, :, :1]], axis=2)
    assert_matches_convert(Image.fromarray(rgba))
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(rgba))), rgba[:, :, :3])
    assert_matches_convert(Image.fromarray(rgba).convert("LA"))


def test_palette_modes():
    rng = np.random.default_rng(2)
    pal = rng.integers(0, 256, 768, dtype=np.uint8)
    idx = rng.integers(0, 16, (23, 29), dtype=np.uint8)
    p = Image.frombytes("P", (29, 23), idx.tobytes())
    p.putpalette(pal.tolist())
    np.testing.assert_array_equal(np.asarray(load_image(p)), pal.reshape(256, 3)[idx])
    assert_matches_convert(p)
    assert_matches_convert(p, transparency=3)  # PNG with a tRNS chunk: transparency is dropped, as in convert


def random_mode_image(mode, w=19, h=11):
    rng = np.random.default_rng(4)
    if mode == "JPEG":  # a lazily opened JPEG, exactly what the reference's Image.open hands to convert
        return Image.open(io.BytesIO(encode(Image.fromarray(noise_rgb(w, h)), "JPEG")))
    if mode == "F":  # out-of-range and fractional values: PIL's convert clips to [0, 255] and truncates
        return Image.fromarray(rng.uniform(-50, 300, (h, w)).astype(np.float32))
    if mode in ("CMYK", "YCbCr"):
        raw = rng.integers(0, 256, w * h * Image.getmodebands(mode), dtype=np.uint8).tobytes()
        return Image.frombytes(mode, (w, h), raw)
    return Image.fromarray(noise_rgb(w, h, seed=5)).convert(mode)


@pytest.mark.parametrize("mode", ["CMYK", "L", "1", "YCbCr", "F", "JPEG"])
def test_standard_modes_match_convert(mode):
    img = random_mode_image(mode)
    np.testing.assert_array_equal(np.asarray(load_image(img)), np.asarray(img.convert("RGB")))


def test_sixteen_bit_keeps_high_byte():
    vals = np.array([[0, 255, 256, 1000, 32768, 65535]], dtype=np.uint16)
    want = np.repeat((vals >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    for img in (Image.fromarray(vals), Image.frombytes("I;16B", (6, 1), vals.astype(">u2").tobytes())):
        np.testing.assert_array_equal(np.asarray(load_image(img)), want)
    np.testing.assert_array_equal(np.asarray(load_image(encode(Image.fromarray(vals)))), want)  # 16-bit PNG
    wide = Image.fromarray(np.array([[-5, 70000, 512]], dtype=np.int32))  # mode "I": clip to [0, 65535] first
    np.testing.assert_array_equal(np.asarray(load_image(wide))[0, :, 0], [0, 255, 2])


def test_input_kinds_identical(tmp_path):
    arr = noise_rgb(301, 203, seed=7)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    t, data, strided = torch.from_numpy(arr), path.read_bytes(), arr[:, ::-1][:, ::-1]  # strided: non-contiguous
    srcs = [path, str(path), data, bytearray(data), arr, Image.fromarray(arr), t, t.permute(2, 0, 1), strided]
    ref = reference_pixels(Image.fromarray(arr), 12)
    for src in srcs:
        assert torch.equal(preprocess(src).pixel_values, ref), type(src)
    with pytest.raises(ImageError, match="dtype float64"):
        preprocess(np.ones((8, 8)))


def test_grey_and_alpha_layouts(tmp_path):
    grey = noise_rgb(41, 37, seed=8)[:, :, 0]
    want = np.asarray(Image.fromarray(grey).convert("RGB"))
    t = torch.from_numpy(grey)
    for src in (grey, grey[:, :, None], t, t[None], t[:, :, None], encode(Image.fromarray(grey))):
        np.testing.assert_array_equal(np.asarray(load_image(src)), want)
    rgba = np.concatenate([noise_rgb(41, 37, seed=9), grey[:, :, None]], axis=2)
    np.testing.assert_array_equal(np.asarray(load_image(torch.from_numpy(rgba).permute(2, 0, 1))), rgba[:, :, :3])
    # (3, 5, 3) is ambiguous; the last dim wins, so it is H=3, W=5, C=3.
    assert load_image(torch.from_numpy(noise_rgb(5, 3, seed=1))).size == (5, 3)


def png_header_only(w, h):
    """A PNG whose IHDR claims w x h (8-bit RGB) but whose pixel data is a few garbage bytes."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(bytes(7))), (b"IEND", b"")]
    body = b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def truncated(fmt):
    data = encode(Image.fromarray(noise_rgb(120, 90, seed=11)), fmt)
    return data[: len(data) // 2]


BAD = [
    (lambda p: p / "missing.png", r"missing\.png.*not found"),
    (lambda p: b"this is not an image at all", "not a readable image"),
    (lambda p: truncated("PNG"), "truncated"),
    (lambda p: truncated("JPEG"), "truncated"),
    (lambda p: noise_rgb(8, 8).astype(np.float32), "dtype float32; expected uint8"),
    (lambda p: torch.rand(3, 8, 8), "dtype torch.float32; expected torch.uint8"),
    (lambda p: noise_rgb(8, 8)[None], r"shape \(1, 8, 8, 3\)"),
    (lambda p: noise_rgb(8, 8)[:, :, :2], r"shape \(8, 8, 2\)"),
    (lambda p: np.zeros((0, 5, 3), np.uint8), "empty"),
    (lambda p: Image.new("RGB", (0, 0)), "empty"),
    (lambda p: [[1, 2], [3, 4]], "unsupported image type list"),
]


@pytest.mark.parametrize("tolerant", [False, True])  # True: some other library told Pillow to accept truncation
@pytest.mark.parametrize("make,message", BAD)
def test_bad_inputs(tmp_path, monkeypatch, make, message, tolerant):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", tolerant)
    with pytest.raises(ImageError, match=message):
        load_image(make(tmp_path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is tolerant  # restored after our strict decode


def test_pixel_limit_checked_before_decoding():
    data = png_header_only(2000, 2000)
    with pytest.raises(ImageError, match=r"could not be decoded"):  # the pixel data really is undecodable...
        load_image(data)
    with pytest.raises(ImageError, match=r"2000x2000 = 4000000 pixels.*max_pixels=1000\b"):  # ...yet never read
        load_image(data, max_pixels=1000)
    with pytest.raises(ImageError, match="max_pixels=1000"):
        preprocess(noise_rgb(50, 50), max_pixels=1000)
    with pytest.raises(ImageError, match="max_pixels must be a positive int"):
        load_image(noise_rgb(8, 8), max_pixels=0)


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow's own warning, then its own error
def test_pillow_bomb_limit_becomes_image_error(side):
    with pytest.raises(ImageError, match=f"Pillow's decompression-bomb limit.*{side * side} pixels"):
        load_image(png_header_only(side, side), max_pixels=10**9)
