"""Image loading and HoVLE/InternVL dynamic-tiling preprocessing (docs/hovle.md §7).

Pipeline, bit-identical to the authors' README path `Image.open(f).convert("RGB")` -> `dynamic_preprocess` ->
torchvision `Resize((448, 448)) + ToTensor + Normalize`, without depending on torchvision:

    load_image   any supported source -> PIL RGB image (W, H)
    choose_grid  (W, H) -> (cols, rows), the reference aspect-ratio scan
    preprocess   both, then the tiles: resize to (S*cols, S*rows) with PIL bicubic, cols*rows SxS tiles row-major,
                 + the thumbnail, -> (n, 3, S, S) float32, ((x / 255) - mean) / std per channel -> ImageInput

The tiles have one specification, hovle.kernels.preprocess.preprocess_tiles_ref (PIL + torch), which the Python path
runs; preprocess="auto" runs the same step as one native C++ pass instead
(hovle.kernels.preprocess.preprocess_tiles), bit-identical to it (tests/kernels/test_preprocess.py); the tiling
decision stays here in Python.

EXIF orientation is deliberately NOT applied: the reference does not call ImageOps.exif_transpose, so a rotated
phone photo must reach the model exactly as the reference feeds it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from hovle.errors import ImageError
from hovle.kernels.preprocess import native_problem, preprocess_tiles, preprocess_tiles_ref
from hovle.loaders.image_input import check_max_pixels, check_size, from_array, from_tensor, rgb_array

# Pillow's default warning threshold (Image.MAX_IMAGE_PIXELS): larger images are almost always decompression
# bombs, or scans that tile to the same 12 tiles as a smaller copy would.
DEFAULT_MAX_PIXELS = 89_478_485
PREPROCESS_PATHS = ("auto", "python", "native")
# Integer modes wider than 8 bits. PIL's convert("RGB") clips them at 255, which turns any 16-bit photo
# white; we keep the 8 most significant bits instead (value >> 8). "I" (int32) is how Pillow represents
# 16-bit grey data from some formats, so it gets the same rule after clipping to [0, 65535].
_WIDE_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_TRUNCATION_LOCK = threading.Lock()


@dataclass
class ImageInput:
    """One preprocessed image: pixel_values (num_tiles, 3, S, S) float32, grid (cols, rows), size (W, H), the
    path that produced the pixels: "python" (PIL + torch) or "native-cpu" (hovle.kernels._native), and `key`, a hash of
    the decoded pixels and the tiling that identifies the tiles' content (what prefix caching keys images by)."""

    pixel_values: torch.Tensor
    grid: tuple[int, int]
    num_tiles: int
    size: tuple[int, int]
    path: str = "python"
    key: bytes = b""


def content_key(rgb: np.ndarray, grid: tuple[int, int], image_size: int, use_thumbnail: bool) -> bytes:
    """sha256 of the RGB pixels (H, W, 3) uint8 and everything the tiles are computed from."""
    digest = hashlib.sha256(repr((rgb.shape, grid, image_size, use_thumbnail)).encode())
    digest.update(memoryview(np.ascontiguousarray(rgb)).cast("B"))
    return digest.digest()


# ----------------------------------------------------------------------------------------------- loading


def load_image(src, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return `src` as a new PIL image in mode RGB.

    src: PIL image, str / os.PathLike path, bytes / bytearray (an encoded file), numpy uint8 array (H, W),
    (H, W, 1), (H, W, 3) or (H, W, 4), or torch uint8 tensor in those layouts or (C, H, W) with C in {1, 3, 4}
    (taken as CHW only when the last dim is not itself 1, 3 or 4). Alpha is dropped, not composited, as
    PIL's convert("RGB") does. Images with more than `max_pixels` pixels are rejected before decoding; encoded
    files are also held to Pillow's own Image.MAX_IMAGE_PIXELS, so raising max_pixels past it needs both.
    """
    check_max_pixels(max_pixels)
    if isinstance(src, Image.Image):
        return _decode(src, "PIL image", max_pixels)
    if isinstance(src, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(src))
        with _open(path, f"image file {path!r}") as img:
            return _decode(img, f"image file {path!r}", max_pixels)
    if isinstance(src, (bytes, bytearray)):
        label = f"image bytes ({len(src)} bytes)"
        with _open(io.BytesIO(bytes(src)), label) as img:
            return _decode(img, label, max_pixels)
    if isinstance(src, np.ndarray):
        return from_array(src, "numpy array", max_pixels)
    if isinstance(src, torch.Tensor):
        return from_tensor(src, max_pixels)
    raise ImageError(
        f"unsupported image type {type(src).__name__}; expected a PIL image, a path, encoded bytes, "
        "a numpy uint8 array or a torch uint8 tensor"
    )


def _open(fp, label: str) -> Image.Image:
    # Image.open only parses the header, so the size is known here before any pixel is decoded. Pillow checks its
    # own bomb limit in here and only warns below 2x; the filter (process-wide, like warnings itself) makes it raise.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp)
    except FileNotFoundError as e:
        raise ImageError(f"{label} not found: no such file") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{label} exceeds Pillow's decompression-bomb limit: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{label} is not a readable image: unknown format or corrupt header") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{label} could not be opened as an image: {e}") from e


def _decode(img: Image.Image, label: str, max_pixels: int) -> Image.Image:
    check_size(img.width, img.height, label, max_pixels)
    try:
        with _strict_truncation():
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{label} could not be decoded (corrupt or truncated data): {e}") from e
    return _to_rgb(img, label)


@contextlib.contextmanager
def _strict_truncation():
    # Pillow reads this module global while decoding; if any library set it True, a truncated file would load
    # as a partly blank image and silently change the answer. Force it off for our decode, restore afterwards.
    with _TRUNCATION_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    if img.mode in _WIDE_INT_MODES:
        grey = np.asarray(img).astype(np.int64)  # (H, W); int64 so int32 "I" data clips instead of wrapping
        grey8 = (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(grey8[:, :, None], 3, axis=2))  # (H, W) -> (H, W, 3)
    try:
        # Same call as the reference, so every standard mode (incl. "F": clip to [0, 255], truncate) matches.
        return img.convert("RGB")
    except ValueError as e:
        raise ImageError(f"{label} has mode {img.mode!r}, which cannot be converted to RGB: {e}") from e


# ----------------------------------------------------------------------------------------------- tiling


def _check_tiling_args(min_num: int, max_num: int, image_size: int) -> None:
    for name, value in (("min_num", min_num), ("max_num", max_num), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ImageError(f"{name} must be an int, got {value!r}")
    if min_num < 1 or max_num < min_num:
        raise ImageError(f"need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}")
    if image_size < 1:
        raise ImageError(f"image_size must be >= 1, got {image_size}")


@functools.lru_cache(maxsize=64)
def _candidate_grids(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    # The reference builds a set with a triple loop over n, i, j <= n (cubic in max_num) and scans it sorted by
    # i*j; among equal products the order is CPython's set iteration order, which only the same insertions
    # reproduce. Re-adding an element changes nothing, so what matters is the order of first insertion: (i, j)
    # first appears at n = max(min_num, i, j), then in (i, j) order. The same set is built here from the
    # O(max_num log max_num) pairs with i*j <= max_num, inserted in exactly that order.
    pairs = [(i, j) for i in range(1, max_num + 1) for j in range(1, max_num // i + 1) if i * j >= min_num]
    target_ratios = set()
    for pair in sorted(pairs, key=lambda ij: (max(min_num, *ij), ij)):
        target_ratios.add(pair)
    return tuple(sorted(target_ratios, key=lambda x: x[0] * x[1]))


def choose_grid(width: int, height: int, *, min_num: int, max_num: int, image_size: int) -> tuple[int, int]:
    """Return the (cols, rows) tile grid the reference picks for a width x height image."""
    _check_tiling_args(min_num, max_num, image_size)
    if width < 1 or height < 1:
        raise ImageError(f"image size must be at least 1x1, got {width}x{height}")
    aspect = width / height
    area = width * height
    best_diff, best = float("inf"), (1, 1)
    for i, j in _candidate_grids(min_num, max_num):
        diff = abs(aspect - i / j)
        if diff < best_diff:
            best_diff, best = diff, (i, j)
        elif diff == best_diff and area > 0.5 * image_size * image_size * i * j:
            # Exact tie (e.g. 2:1 -> (2, 1) vs (4, 2)): take the bigger grid only if the image has the pixels.
            best = (i, j)
    return best


def preprocess(
    src,
    *,
    image_size: int = 448,
    max_num: int = 12,
    min_num: int = 1,
    use_thumbnail: bool = True,
    dynamic: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    preprocess: str = "auto",
) -> ImageInput:
    """Load `src` (anything load_image takes) and turn it into model-ready tiles.

    dynamic=False gives one tile, the whole image resized to image_size x image_size (same as max_num=1).
    preprocess: "python" (PIL resize + torch), "native" (one C++ pass, hovle.kernels.preprocess; an error if it is not
    built), or "auto" (native when available). Both give bit-identical pixels; ImageInput.path says which ran.
    """
    _check_tiling_args(min_num, max_num, image_size)
    if _native_path(preprocess):
        rgb = rgb_array(src, max_pixels, load_image)  # (H, W, 3) uint8
        size = (rgb.shape[1], rgb.shape[0])
        grid = _grid(size, dynamic, min_num, max_num, image_size)
        pixel_values = preprocess_tiles(rgb, grid, image_size, use_thumbnail)
        key = content_key(rgb, grid, image_size, use_thumbnail)
        return ImageInput(pixel_values, grid, pixel_values.shape[0], size, "native-cpu", key)
    img = load_image(src, max_pixels=max_pixels)
    grid = _grid(img.size, dynamic, min_num, max_num, image_size)
    rgb = np.asarray(img)  # (H, W, 3) uint8
    pixel_values = preprocess_tiles_ref(rgb, grid, image_size, use_thumbnail)
    return ImageInput(
        pixel_values, grid, pixel_values.shape[0], img.size, "python", content_key(rgb, grid, image_size, use_thumbnail)
    )


def _grid(size: tuple[int, int], dynamic: bool, min_num: int, max_num: int, image_size: int) -> tuple[int, int]:
    if not dynamic:
        return (1, 1)
    return choose_grid(size[0], size[1], min_num=min_num, max_num=max_num, image_size=image_size)


def _native_path(mode: str) -> bool:
    if mode not in PREPROCESS_PATHS:
        raise ImageError(f"preprocess must be one of {PREPROCESS_PATHS}, got {mode!r}")
    if mode == "python":
        return False
    problem = native_problem()
    if mode == "native" and problem is not None:
        raise ImageError(f"preprocess='native' is unavailable: {problem}")
    return problem is None
