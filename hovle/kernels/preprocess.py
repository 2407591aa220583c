"""Image preprocessing, fused: decoded uint8 RGB pixels -> normalised tiles (docs/hovle.md §7).

    pixels[t, c] = (resize(image)[tile t, channel c] / 255 - mean[c]) / std[c]

image (H, W, 3) uint8; grid (cols, rows); output (n, 3, S, S) with n = cols * rows, tiles row-major from the image
resized to (S * cols, S * rows), plus, when use_thumbnail and cols * rows != 1, the whole image resized to S x S.
`resize` is PIL's antialiased bicubic (Image.resize(..., BICUBIC): separable, 22-bit fixed-point weights, uint8
rounding after each pass, in the installed Pillow's pass order). csrc/preprocess.cpp (CPU threads over tiles, row
bands and column chunks) and csrc/preprocess_cuda.cu (one block per tile, row band and column chunk) reproduce it
bit-exactly and write the output dtype directly (float32, float16 or bfloat16, rounded to nearest even from the
float32 value). preprocess_tiles_ref is the PIL + torch path, the spec. This file is the only Python entry to the
native code.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_CUDA_LIB = Path(__file__).with_name("_preprocess_cuda.so")


def preprocess_tiles_ref(
    image_u8: np.ndarray,
    grid: tuple[int, int],
    image_size: int,
    use_thumbnail: bool,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The reference: PIL resize + crop, then ToTensor + Normalize in float32, cast to dtype. Same arguments."""
    _check(image_u8, grid, image_size, dtype)
    (cols, rows), s = grid, image_size
    img = Image.fromarray(np.ascontiguousarray(image_u8))
    big = img.resize((s * cols, s * rows), Image.Resampling.BICUBIC)
    tiles = [big.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)) for r in range(rows) for c in range(cols)]
    if use_thumbnail and cols * rows != 1:
        tiles.append(img.resize((s, s), Image.Resampling.BICUBIC))
    hwc = torch.from_numpy(np.stack([np.asarray(t) for t in tiles]))  # (n, S, S, 3) uint8
    chw = hwc.permute(0, 3, 1, 2).contiguous().to(torch.float32)  # (n, S, S, 3) -> (n, 3, S, S)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)  # (3,) -> (3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)  # (3,) -> (3, 1, 1)
    return chw.div(255).sub_(mean).div_(std).to(dtype)


def preprocess_tiles(
    image_u8: np.ndarray,
    grid: tuple[int, int],
    image_size: int,
    use_thumbnail: bool,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    num_threads: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resize, tile and normalise in one native pass; bit-identical to preprocess_tiles_ref.

    image_u8: (H, W, 3) uint8 numpy array (copied if not C-contiguous). grid: (cols, rows), ints in 1..4096.
    image_size: tile side S in 1..16384. use_thumbnail: append the S x S whole-image tile when cols * rows != 1.
    dtype: torch.float32, float16 or bfloat16. device: "cpu" (C++ threads) or a CUDA device (the uint8 image is
    copied to it, then one kernel launch on the current stream). num_threads (CPU only): None for every CPU this
    process may use, capped at the number of work items. out: optional contiguous (n, 3, S, S) tensor of dtype on
    device to write into (e.g. a slice of a batch). Returns out, or a new (n, 3, S, S) tensor.
    """
    _check(image_u8, grid, image_size, dtype)
    if num_threads is not None and (type(num_threads) is not int or num_threads < 1):
        raise ValueError(f"num_threads must be None or an int >= 1, got {num_threads!r}")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {device}")
    problem = native_problem() if device.type == "cpu" else cuda_problem()
    if problem is not None:
        raise RuntimeError(f"the native {device.type.upper()} preprocessing is unavailable: {problem}")
    (cols, rows), s = grid, image_size
    shape = (cols * rows + (1 if use_thumbnail and cols * rows != 1 else 0), 3, s, s)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=device)
    elif (
        not isinstance(out, torch.Tensor)
        or (tuple(out.shape), out.dtype, out.device.type) != (shape, dtype, device.type)
        or not out.is_contiguous()
    ):
        got = f"{tuple(out.shape)} {out.dtype} on {out.device}" if isinstance(out, torch.Tensor) else type(out)
        raise ValueError(f"out must be a contiguous {shape} {dtype} tensor on {device}, got {got}")
    image_u8 = np.ascontiguousarray(image_u8)
    if device.type == "cuda":
        return _run_cuda(image_u8, grid, s, use_thumbnail, out)
    _native().preprocess_tiles(
        image_u8,
        out.data_ptr(),
        _DTYPE_CODES[dtype],
        shape,
        cols,
        rows,
        use_thumbnail,
        _pillow13_order(),
        num_threads or 0,
    )
    return out


def native_available() -> bool:
    """True when the CPU extension hovle.kernels._native is built and reproduces the installed Pillow."""
    return native_problem() is None


def cuda_available() -> bool:
    """True when hovle/kernels/_preprocess_cuda.so is built, loads, and a CUDA device is visible to torch."""
    return cuda_problem() is None


def describe() -> str:
    """One line: which preprocessing paths this installation can use, and why not the others."""
    native, cuda = native_problem(), cuda_problem()
    return (
        f"native CPU: {'yes' if native is None else 'no (' + native + ')'}; "
        f"CUDA: {'yes' if cuda is None else 'no (' + cuda + ')'}"
    )


@functools.cache
def native_problem() -> str | None:
    """Why the CPU extension cannot be used (None when it can)."""
    try:
        _native()
    except ImportError as e:
        return f"hovle.kernels._native is not built ({e}); install with a C++17 compiler and pybind11: `make setup`"
    if _pillow13_order() is None:
        return "the installed Pillow resamples differently from both pass orders the native code knows"
    return None


@functools.cache
def cuda_problem() -> str | None:
    """Why the CUDA implementation cannot be used (None when it can)."""
    if not _CUDA_LIB.exists():
        return f"{_CUDA_LIB.name} is not built (needs nvcc at install time and HOVLE_BUILD_CUDA != 0)"
    try:
        lib = _cuda_lib()
    except OSError as e:
        return f"{_CUDA_LIB.name} does not load: {e}"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    err = ctypes.create_string_buffer(256)
    if lib.hovle_cuda_check(err, len(err)) != 0:
        return f"{_CUDA_LIB.name} cannot use the GPU: {err.value.decode(errors='replace')}"
    return native_problem()  # the pass-order probe runs on the CPU extension


def _check(image_u8, grid, image_size, dtype) -> None:
    if not isinstance(image_u8, np.ndarray) or image_u8.dtype != np.uint8:
        got = f"dtype {image_u8.dtype}" if isinstance(image_u8, np.ndarray) else type(image_u8).__name__
        raise ValueError(f"image_u8 must be a numpy uint8 array, got {got}")
    if image_u8.ndim != 3 or image_u8.shape[2] != 3 or image_u8.shape[0] < 1 or image_u8.shape[1] < 1:
        raise ValueError(f"image_u8 must have shape (H, W, 3) with H, W >= 1, got {tuple(image_u8.shape)}")
    if max(image_u8.shape[:2]) >= 2**30:
        raise ValueError(f"image_u8 sides must be below 2**30, got {tuple(image_u8.shape)}")
    ints = isinstance(grid, tuple) and len(grid) == 2 and all(type(v) is int for v in grid)
    if not ints or min(grid) < 1 or max(grid) > 4096:
        raise ValueError(f"grid must be a tuple (cols, rows) of ints in 1..4096, got {grid!r}")
    if type(image_size) is not int or not 1 <= image_size <= 16384:
        raise ValueError(f"image_size must be an int in 1..16384, got {image_size!r}")
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}")


def _native():
    from hovle.kernels import _native  # compiled by setup.py from csrc/*.cpp

    return _native


@functools.cache
def _pillow13_order() -> bool | None:
    # Pillow 13 runs the vertical pass first for images whose height shrinks much more than their width, older
    # Pillow never does, and the order changes the rounding. Ask the installed Pillow once: a 20x60 image resized
    # to 30x30 takes the vertical-first order under Pillow 13 rules, and the two orders give different pixels.
    image = np.random.default_rng(0).integers(0, 256, (60, 20, 3), dtype=np.uint8)
    ref = preprocess_tiles_ref(image, (1, 1), 30, False)
    out = torch.empty_like(ref)
    for order in (True, False):
        _native().preprocess_tiles(image, out.data_ptr(), 0, tuple(out.shape), 1, 1, False, order, 1)
        if torch.equal(out, ref):
            return order
    return None


@functools.cache
def _cuda_lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_CUDA_LIB))
    lib.hovle_cuda_check.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    ints = [ctypes.c_int] * 7  # height, width, cols, rows, use_thumbnail, size, pillow13_order
    lib.hovle_preprocess_cuda.argtypes = [
        ctypes.c_void_p,
        *ints,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.hovle_preprocess_cuda_emulated.argtypes = [ctypes.c_void_p, *ints, ctypes.c_void_p, ctypes.c_int]
    return lib


def _run_cuda(image_u8: np.ndarray, grid, s: int, use_thumbnail: bool, out: torch.Tensor) -> torch.Tensor:
    (h, w), (cols, rows), device = image_u8.shape[:2], grid, out.device
    err = ctypes.create_string_buffer(512)
    with torch.cuda.device(device):
        image_dev = torch.from_numpy(image_u8).to(device)  # the host-to-device copy is part of the op
        rc = _cuda_lib().hovle_preprocess_cuda(
            image_dev.data_ptr(),
            h,
            w,
            cols,
            rows,
            int(use_thumbnail),
            s,
            int(_pillow13_order()),
            out.data_ptr(),
            _DTYPE_CODES[out.dtype],
            device.index,
            torch.cuda.current_stream(device).cuda_stream,
            err,
            len(err),
        )
    if rc != 0:
        raise RuntimeError(f"CUDA preprocessing failed: {err.value.decode(errors='replace')}")
    return out


def _cuda_kernel_emulated(image_u8, grid, image_size, use_thumbnail, dtype=torch.float32) -> torch.Tensor:
    """For tests without a GPU: the CUDA kernel's own block functions run serially on the host (same plan)."""
    _check(image_u8, grid, image_size, dtype)
    image_u8, (cols, rows), s = np.ascontiguousarray(image_u8), grid, image_size
    out = torch.empty((cols * rows + (1 if use_thumbnail and cols * rows != 1 else 0), 3, s, s), dtype=dtype)
    rc = _cuda_lib().hovle_preprocess_cuda_emulated(
        image_u8.ctypes.data,
        image_u8.shape[0],
        image_u8.shape[1],
        cols,
        rows,
        int(use_thumbnail),
        s,
        int(_pillow13_order()),
        out.data_ptr(),
        _DTYPE_CODES[dtype],
    )
    if rc != 0:
        raise RuntimeError("a CUDA block's first-pass window exceeds the buffer its launcher sizes")
    return out
