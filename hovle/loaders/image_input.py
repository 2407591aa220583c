"""Array and tensor image inputs: validation and conversion to RGB (helpers of hovle/image.py).

The Python path wants a PIL image; the native path wants the RGB pixels as a C-contiguous uint8 (H, W, 3) array,
and for array / tensor inputs gets them without a round trip through PIL. Both give the same pixels as
PIL's convert("RGB"): grey (H, W) / (H, W, 1) is replicated into R, G and B, and alpha is dropped, not composited.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hovle.errors import ImageError

_CHANNELS = (1, 3, 4)


def check_max_pixels(max_pixels) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ImageError(f"max_pixels must be a positive int, got {max_pixels!r}")


def check_size(width: int, height: int, label: str, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{label} is empty ({width}x{height} pixels); expected width and height >= 1")
    if width * height > max_pixels:
        raise ImageError(
            f"{label} is {width}x{height} = {width * height} pixels, above the limit max_pixels={max_pixels} "
            "(decompression-bomb guard); pass a larger max_pixels if the image is genuine"
        )


def _checked_array(arr: np.ndarray, label: str, max_pixels: int) -> np.ndarray:
    """arr as (H, W), (H, W, 3) or (H, W, 4) uint8, after the dtype, layout and size checks."""
    if arr.dtype != np.uint8:
        raise ImageError(f"{label} has dtype {arr.dtype}; expected uint8 with values 0..255")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]  # (H, W, 1) -> (H, W)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageError(f"{label} has shape {tuple(arr.shape)}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    check_size(arr.shape[1], arr.shape[0], label, max_pixels)
    return arr


def _tensor_as_array(t: torch.Tensor) -> np.ndarray:
    if t.dtype != torch.uint8:
        raise ImageError(f"torch tensor has dtype {t.dtype}; expected torch.uint8 with values 0..255")
    if t.ndim == 3 and t.shape[0] in _CHANNELS and t.shape[-1] not in _CHANNELS:
        t = t.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
    return t.detach().cpu().numpy()


def from_array(arr: np.ndarray, label: str, max_pixels: int) -> Image.Image:
    """A new RGB PIL image from a uint8 array in any supported layout."""
    arr = _checked_array(arr, label, max_pixels)
    # fromarray maps (H, W) -> "L", (H, W, 3) -> "RGB", (H, W, 4) -> "RGBA"; convert copies so the caller's
    # buffer is never shared with the result.
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


def from_tensor(t: torch.Tensor, max_pixels: int) -> Image.Image:
    """A new RGB PIL image from a uint8 tensor, (H, W[, C]) or (C, H, W)."""
    return from_array(_tensor_as_array(t), "torch tensor", max_pixels)


def rgb_array(src, max_pixels: int, load_image) -> np.ndarray:
    """src's RGB pixels as a C-contiguous uint8 (H, W, 3) array, equal to np.asarray(load_image(src)).

    Arrays and tensors are converted directly (a contiguous RGB array is used as is: the native path only reads
    it); every other kind of source goes through load_image.
    """
    check_max_pixels(max_pixels)
    if isinstance(src, torch.Tensor):
        arr, label = _tensor_as_array(src), "torch tensor"
    elif isinstance(src, np.ndarray):
        arr, label = src, "numpy array"
    else:
        return np.asarray(load_image(src, max_pixels=max_pixels))
    arr = _checked_array(arr, label, max_pixels)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3): grey into R, G and B
    return np.ascontiguousarray(arr[:, :, :3])  # (H, W, 3 or 4) -> (H, W, 3): alpha dropped
