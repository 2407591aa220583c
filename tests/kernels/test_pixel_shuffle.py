"""Triton pixel_shuffle vs pixel_shuffle_ref: data movement, so bit-exact (CPU interpreter; model shape on CUDA)."""

import pytest
import torch

from hovle.kernels.pixel_shuffle import pixel_shuffle, pixel_shuffle_ref
from tests.kernels.support import bits
from tests.support import kernel_device, requires_cuda

pytestmark = pytest.mark.gpu  # make gpu-check runs these

DEV = kernel_device()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]  # no tl.dot: bf16 is fine in the interpreter


def patches(n: int, grid: int, c: int, dtype: torch.dtype, layout: str, gen: torch.Generator) -> torch.Tensor:
    """(N, g*g, C) random patches: contiguous, a channel slice of wider rows, or a (C, P)-major transpose."""
    p = grid * grid
    if layout == "sliced":
        return torch.randn(n, p, c + 13, generator=gen).to(DEV, dtype)[:, :, 5 : 5 + c]
    if layout == "transposed":
        return torch.randn(n, c, p, generator=gen).to(DEV, dtype).transpose(1, 2)
    return torch.randn(n, p, c, generator=gen).to(DEV, dtype)


LAYOUTS = ["contiguous", "sliced", "transposed"]
# The 32 x 32 model grid is 1024 programs per tile: slow under the interpreter, so only two layouts there.
CASES = [(4, 3, 24, lay) for lay in LAYOUTS] + [(6, 1, 37, lay) for lay in LAYOUTS] + [(32, 1, 8, "contiguous")]
CASES += [(32, 1, 8, "sliced")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grid, n, c, layout", CASES, ids=str)
def test_pixel_shuffle_bit_exact(dtype, grid, n, c, layout):
    gen = torch.Generator().manual_seed(grid * 1000 + c)
    x = patches(n, grid, c, dtype, layout, gen)
    out = pixel_shuffle(x, grid)
    ref = pixel_shuffle_ref(x, grid)
    assert out.shape == (n, grid * grid // 4, 4 * c) and out.dtype == dtype and out.is_contiguous()
    assert torch.equal(bits(out), bits(ref))


def test_pixel_shuffle_wide_rows_span_several_blocks():
    """C above the 2048-element block: the second grid axis covers the row in pieces."""
    x = torch.randn(1, 16, 2500, generator=torch.Generator().manual_seed(1)).to(DEV)
    assert torch.equal(bits(pixel_shuffle(x, 4)), bits(pixel_shuffle_ref(x, 4)))


@requires_cuda
@pytest.mark.parametrize("n", [1, 13])
def test_pixel_shuffle_model_shape_cuda(n):
    x = torch.randn(n, 1024, 2048, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(bits(pixel_shuffle(x, 32)), bits(pixel_shuffle_ref(x, 32)))


def test_pixel_shuffle_under_compile_matches():
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(2)).to(DEV)
    fake = torch.library.opcheck(torch.ops.hovle.pixel_shuffle.default, (x, 4), test_utils=("test_faketensor",))
    assert fake["test_faketensor"] == "SUCCESS"


@pytest.mark.parametrize(
    "shape, grid, match",
    [((2, 16), 4, "x must be"), ((1, 16, 8), 3, "grid"), ((1, 16, 8), 6, "patches per tile"), ((1, 36, 8), 0, "grid")],
    ids=["2d", "odd-grid", "wrong-grid", "zero-grid"],
)
def test_pixel_shuffle_rejects_bad_inputs(shape, grid, match):
    with pytest.raises(ValueError, match=match):
        pixel_shuffle(torch.randn(*shape, device=DEV), grid)
