"""Tests for hovle/kernels/preprocess.py (csrc/preprocess.cpp, csrc/preprocess_cuda.cu) against the PIL + torch
reference, and for hovle.loaders.image.preprocess(..., preprocess=...). CPU tests skip if hovle.kernels._native is not
built, kernel emulation tests if hovle/kernels/_preprocess_cuda.so is not, and CUDA tests without a GPU."""

import numpy as np
import pytest
import torch
from PIL import Image

from hovle.kernels import preprocess as kp
from hovle.loaders.image import choose_grid
from tests.support import drawing, photo

S = 448
MEAN = torch.tensor(kp.MEAN).view(1, 3, 1, 1)  # (3,) -> (1, 3, 1, 1)
STD = torch.tensor(kp.STD).view(1, 3, 1, 1)  # (3,) -> (1, 3, 1, 1)
HALF = (torch.float16, torch.bfloat16)

needs_native = pytest.mark.skipif(not kp.native_available(), reason=f"native CPU path: {kp.native_problem()}")
needs_cuda = pytest.mark.skipif(not kp.cuda_available(), reason=f"CUDA path: {kp.cuda_problem()}")


def _cuda_lib_problem():
    try:
        kp._cuda_lib()
        return None if kp.native_available() else kp.native_problem()
    except OSError as e:
        return f"hovle/kernels/_preprocess_cuda.so not loadable: {e}"


needs_cuda_lib = pytest.mark.skipif(_cuda_lib_problem() is not None, reason=f"{_cuda_lib_problem()}")


def check_close(out, ref):
    """The contract: uint8-equivalent values within 1, normalised values within 1/255/std (+1e-6) per channel."""
    assert out.shape == ref.shape and out.dtype == ref.dtype == torch.float32
    u8 = ((out * STD + MEAN) * 255).round()
    u8_ref = ((ref * STD + MEAN) * 255).round()
    assert (u8 - u8_ref).abs().max() <= 1
    assert ((out - ref).abs() <= 1 / 255 / STD + 1e-6).all()


# One (W, H, max_num) per tile count 1..12 (as in test_image.py: side 320 fills the same-ratio grid), then odd cases.
GRIDS = [(1, 1), (2, 1), (3, 1), (2, 2), (5, 1), (3, 2), (7, 1), (4, 2), (3, 3), (5, 2), (11, 1), (4, 3)]
COUNTS = [(c * 320, r * 320, c * r) for c, r in GRIDS]
ODD = [
    (1, 2000, 12),
    (2000, 1, 12),
    (1, 1, 12),
    (13, 7, 12),
    (7, 13, 6),
    (300, 900, 12),
    (200, 3000, 12),
    (4032, 3024, 12),
    (3024, 4032, 6),
    (1024, 768, 12),
    (640, 480, 1),
]


@needs_native
@pytest.mark.parametrize("kind", [photo, drawing])
@pytest.mark.parametrize("w,h,max_num", COUNTS + ODD)
def test_matches_reference(kind, w, h, max_num):
    img = kind(w, h, seed=w * 31 + h)
    grid = choose_grid(w, h, min_num=1, max_num=max_num, image_size=S)
    ref = kp.preprocess_tiles_ref(img, grid, S, True)
    out = kp.preprocess_tiles(img, grid, S, True)
    if (w, h, max_num) in COUNTS:
        assert grid[0] * grid[1] == max_num and out.shape[0] == max_num + (max_num > 1)
    check_close(out, ref)
    assert torch.equal(out, ref)  # in fact bit-identical with the installed Pillow
    for dtype in HALF:  # the half types: exactly the float32 result rounded to nearest even
        assert torch.equal(kp.preprocess_tiles(img, grid, S, True, dtype), ref.to(dtype))


@needs_native
@pytest.mark.parametrize("size", [1, 7, 64, 65, 100, 129])
def test_odd_tile_sizes_and_no_thumbnail(size):
    img = photo(157, 91, seed=size)
    for grid, thumb in [((3, 2), True), ((2, 5), False), ((1, 1), True)]:
        assert torch.equal(kp.preprocess_tiles(img, grid, size, thumb), kp.preprocess_tiles_ref(img, grid, size, thumb))


@needs_native
def test_pass_order_rule_against_pillow():
    # Random sizes and output shapes on both sides of Pillow 13's vertical-first rule (heights shrinking by more
    # than twice the width's shrink); the rule and the probe are what make these bit-identical.
    rng = np.random.default_rng(5)
    vertical_first = 0
    for k in range(150):
        w, h = (int(v) for v in rng.integers(2, 120, 2))
        size, cols, rows = int(rng.integers(3, 14)), int(rng.integers(1, 7)), int(rng.integers(1, 7))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        vertical_first += h > size * rows and h - size * rows > 2 * (w - size * cols)
        out = kp.preprocess_tiles(img, (cols, rows), size, True, num_threads=1)
        assert torch.equal(out, kp.preprocess_tiles_ref(img, (cols, rows), size, True)), (k, w, h, size, cols, rows)
    assert 20 < vertical_first < 130  # both regimes were exercised


@needs_native
def test_pillow_order_probe_is_decisive():
    image = np.random.default_rng(0).integers(0, 256, (60, 20, 3), dtype=np.uint8)  # the probe's image
    outs = []
    for order in (True, False):
        out = torch.full((1, 3, 30, 30), float("nan"))
        kp._native().preprocess_tiles(image, out.data_ptr(), 0, tuple(out.shape), 1, 1, False, order, 1)
        outs.append(out)
    assert not torch.equal(outs[0], outs[1])
    assert kp._pillow13_order() == (int(Image.__version__.split(".")[0]) >= 13)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_threads_give_identical_bytes_and_every_element_is_written(dtype):
    img = photo(1203, 701, seed=3)
    grid = choose_grid(1203, 701, min_num=1, max_num=12, image_size=S)
    outs = []
    for threads in (1, 2, 3, 8):
        out = torch.full((grid[0] * grid[1] + 1, 3, S, S), float("nan"), dtype=dtype)  # poison
        assert kp.preprocess_tiles(img, grid, S, True, dtype, num_threads=threads, out=out) is out
        outs.append(out)
    assert not outs[0].isnan().any()
    raw = outs[0].view(torch.int32 if dtype == torch.float32 else torch.int16)  # compare bytes, not float values
    for other in outs[1:]:
        assert torch.equal(other.view(raw.dtype), raw)


@needs_native
def test_non_contiguous_input_and_out_slice():
    img = photo(300, 200, seed=4)
    strided = np.ascontiguousarray(img[:, ::-1])[:, ::-1]  # same pixels, negative stride
    assert not strided.flags.c_contiguous
    batch = torch.zeros(10, 3, 56, 56)
    kp.preprocess_tiles(strided, (3, 2), 56, True, out=batch[2:9])
    assert torch.equal(batch[2:9], kp.preprocess_tiles_ref(img, (3, 2), 56, True))
    assert not batch[:2].any() and not batch[9:].any()


BAD_ARGS = [
    (dict(image_u8=photo(8, 8).astype(np.float32)), "numpy uint8 array, got dtype float32"),
    (dict(image_u8=torch.zeros(8, 8, 3, dtype=torch.uint8)), "numpy uint8 array, got Tensor"),
    (dict(image_u8=np.zeros((8, 8), np.uint8)), r"shape \(H, W, 3\).*got \(8, 8\)"),
    (dict(image_u8=np.zeros((8, 8, 4), np.uint8)), r"got \(8, 8, 4\)"),
    (dict(image_u8=np.zeros((0, 8, 3), np.uint8)), r"H, W >= 1, got \(0, 8, 3\)"),
    (dict(grid=(0, 2)), r"grid must be .*got \(0, 2\)"),
    (dict(grid=[2, 2]), r"got \[2, 2\]"),
    (dict(grid=(2.0, 2)), r"got \(2.0, 2\)"),
    (dict(grid=(1, 2, 3)), r"got \(1, 2, 3\)"),
    (dict(image_size=0), "image_size must be an int in 1..16384, got 0"),
    (dict(image_size=448.0), "got 448.0"),
    (dict(dtype=torch.float64), "dtype must be .*got torch.float64"),
    (dict(device="meta"), "device must be 'cpu' or a CUDA device, got meta"),
    (dict(num_threads=0), "num_threads must be None or an int >= 1, got 0"),
    (dict(out=torch.empty(5, 3, 32, 32)), r"out must be a contiguous \(7, 3, 32, 32\).*got \(5, 3, 32, 32\)"),
    (dict(out=torch.empty(7, 3, 32, 32, dtype=torch.float16)), "got .*torch.float16"),
    (dict(out=torch.empty(7, 3, 32, 64)[..., ::2]), "contiguous"),
]


@needs_native
@pytest.mark.parametrize("bad,message", BAD_ARGS)
def test_bad_arguments_raise(bad, message):
    args = dict(image_u8=photo(40, 30), grid=(3, 2), image_size=32, use_thumbnail=True) | bad
    with pytest.raises(ValueError, match=message):
        kp.preprocess_tiles(**args)


@needs_native
def test_extension_guards_its_own_arguments():
    native, out = kp._native(), torch.empty(1, 3, 8, 8)
    call = dict(
        out_ptr=out.data_ptr(),
        dtype=0,
        out_shape=(1, 3, 8, 8),
        cols=1,
        rows=1,
        use_thumbnail=False,
        pillow13_order=True,
    )
    for image, message in [(photo(9, 9)[:, ::2], "C-contiguous"), (np.zeros((4, 4, 3), np.int16), "uint8")]:
        with pytest.raises(ValueError, match=message):
            native.preprocess_tiles(image, **call)
    with pytest.raises(ValueError, match="tiling has 1 tiles"):
        native.preprocess_tiles(photo(9, 9), **(call | dict(out_shape=(2, 3, 8, 8))))


# (W, H, max_num, S). S = 8 from 1000 x 600: windows too big for shared memory at any band (global scratch).
CUDA_CASES = [
    (1024, 768, 12, S),
    (13, 7, 12, S),
    (1, 2000, 12, S),
    (300, 900, 12, S),
    (200, 3000, 12, S),
    (2016, 1512, 6, S),
    (5000, 20, 3, S),
    (1000, 600, 2, 8),
    (77, 100, 12, 100),
]


@pytest.mark.gpu
@needs_cuda_lib
@pytest.mark.parametrize("w,h,max_num,size", CUDA_CASES)
def test_cuda_kernel_emulated_on_host(w, h, max_num, size):
    # The CUDA kernel's block code and its launcher's window sizing, run serially on the host: catches indexing
    # and pass-order bugs where no GPU is available.
    img = photo(w, h, seed=h)
    grid = choose_grid(w, h, min_num=1, max_num=max_num, image_size=size)
    ref = kp.preprocess_tiles_ref(img, grid, size, True)
    assert torch.equal(kp._cuda_kernel_emulated(img, grid, size, True), ref)
    assert torch.equal(kp._cuda_kernel_emulated(img, grid, size, True, torch.bfloat16), ref.to(torch.bfloat16))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("w,h,max_num,size", CUDA_CASES)
def test_cuda_matches_cpu(w, h, max_num, size, dtype):
    img = drawing(w, h, seed=w) if w < 100 else photo(w, h, seed=w)
    grid = choose_grid(w, h, min_num=1, max_num=max_num, image_size=size)
    n = grid[0] * grid[1] + (grid != (1, 1))
    out = torch.full((n, 3, size, size), float("nan"), dtype=dtype, device="cuda")  # poison
    assert kp.preprocess_tiles(img, grid, size, True, dtype, "cuda", out=out) is out
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), kp.preprocess_tiles(img, grid, size, True, dtype))
    assert torch.equal(kp.preprocess_tiles(img, grid, size, True, dtype, "cuda").cpu(), out.cpu())
