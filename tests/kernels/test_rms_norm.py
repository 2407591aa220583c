"""Triton rms_norm vs rms_norm_ref and an fp64 reference (CPU interpreter at small shapes; full shapes on CUDA)."""

import pytest
import torch

from hovle.kernels.rms_norm import rms_norm, rms_norm_ref
from tests.kernels.support import bits, check_graph_replay
from tests.support import kernel_device, requires_cuda

pytestmark = pytest.mark.gpu  # make gpu-check runs these

DEV = kernel_device()
EPS = 1e-5
CPU_DTYPES = [torch.float32, torch.float16]
ALL_DTYPES = CPU_DTYPES + [pytest.param(torch.bfloat16, marks=requires_cuda)]
# (T, C): decode row, odd width, narrow rows packed several per program with a partial last block, the model
# width, and a row wider than the 8192 register limit (two-pass path).
SHAPES = [(1, 64), (3, 300), (17, 128), (5, 2048), (2, 9000)]


def rows(t: int, c: int, dtype: torch.dtype, strided: bool, gen: torch.Generator) -> torch.Tensor:
    """(T, C) random rows; strided ones are a column slice of a wider buffer (row stride C + 24)."""
    full = torch.randn(t, c + 24 if strided else c, generator=gen).to(DEV, dtype)
    return full[:, :c]


def fp64_rms_norm(x, weight, eps, residual):
    r = x.double() + (residual.double() if residual is not None else 0.0)
    return weight.double() * r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("strided", [False, True])
def test_rms_norm_matches_reference(dtype, shape, with_residual, strided):
    gen = torch.Generator().manual_seed(hash((shape, with_residual, strided)) % 2**31)
    t, c = shape
    x = rows(t, c, dtype, strided, gen) * 3
    residual = rows(t, c, dtype, strided, gen) if with_residual else None
    weight = (1 + 0.5 * torch.randn(c, generator=gen)).to(DEV, dtype)

    y, new_res = rms_norm(x, weight, EPS, residual)
    y_ref, res_ref = rms_norm_ref(x, weight, EPS, residual)

    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert torch.equal(bits(new_res), bits(res_ref))  # the add is data movement + one rounding: bit-exact
    assert new_res.data_ptr() != x.data_ptr()  # a fresh tensor, never an alias of x
    exact = fp64_rms_norm(x, weight, EPS, residual)
    err = (y.double() - exact).abs().max().item()
    ref_err = (y_ref.double() - exact).abs().max().item()
    assert err <= 2 * ref_err + 1e-5, f"kernel error {err} vs reference error {ref_err}"


def test_rms_norm_weight_in_other_dtype():
    """An fp32 weight on fp16 activations: the product is promoted as in the reference."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 256, generator=gen).to(DEV, torch.float16)
    weight = torch.randn(256, generator=gen).to(DEV)
    y, _ = rms_norm(x, weight, EPS)
    y_ref, _ = rms_norm_ref(x, weight, EPS)
    assert y.dtype == torch.float32
    err = (y.double() - fp64_rms_norm(x, weight, EPS, None)).abs().max().item()
    assert err <= 2 * (y_ref.double() - fp64_rms_norm(x, weight, EPS, None)).abs().max().item() + 1e-5


def test_rms_norm_empty_batch():
    x = torch.randn(0, 64, device=DEV)
    y, r = rms_norm(x, torch.ones(64, device=DEV), EPS, x.clone())
    assert y.shape == (0, 64) and r.shape == (0, 64)


def test_rms_norm_registered_op():
    gen = torch.Generator().manual_seed(5)
    x, residual = (torch.randn(3, 128, generator=gen).to(DEV) for _ in range(2))
    weight = torch.randn(128, generator=gen).to(DEV)
    torch.library.opcheck(torch.ops.hovle.rms_norm.default, (x, weight, EPS, residual))
    compiled = torch.compile(rms_norm, backend="aot_eager", fullgraph=True)
    for a, b in zip(compiled(x, weight, EPS, residual), rms_norm(x, weight, EPS, residual)):
        assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.randn(2, 3, 8)), "x must be a 2-D"),
        (dict(x=torch.randn(4, 8).t()), "contiguous last dim"),
        (dict(x=torch.randn(8, 4).double()), "float64"),
        (dict(weight=torch.randn(5)), r"weight must be a contiguous \(4,\)"),
        (dict(weight=torch.randn(4, dtype=torch.float64)), "weight must be"),
        (dict(residual=torch.randn(8, 5)), "residual must match x"),
        (dict(residual=torch.randn(8, 4, dtype=torch.float16)), "residual must match x"),
        (dict(residual=torch.randn(8, 4, device="meta")), "residual is on meta"),
        (dict(weight=torch.randn(4, device="meta")), "weight is on meta"),
    ],
)
def test_rms_norm_rejects_bad_input(kwargs, match):
    args = dict(x=torch.randn(8, 4), weight=torch.randn(4), eps=EPS, residual=None) | kwargs
    with pytest.raises(ValueError, match=match):
        rms_norm(**args)


@requires_cuda
@pytest.mark.parametrize("t", [1, 16, 4096])
def test_rms_norm_model_shape_cuda(t):
    gen = torch.Generator().manual_seed(t)
    x, residual = (torch.randn(t, 2048, generator=gen).to("cuda", torch.bfloat16) for _ in range(2))
    weight = torch.randn(2048, generator=gen).to("cuda", torch.bfloat16)
    y, new_res = rms_norm(x, weight, EPS, residual)
    y_ref, res_ref = rms_norm_ref(x, weight, EPS, residual)
    assert torch.equal(bits(new_res), bits(res_ref))
    exact = fp64_rms_norm(x, weight, EPS, residual)
    assert (y.double() - exact).abs().max() <= 2 * (y_ref.double() - exact).abs().max() + 1e-5


@requires_cuda
def test_rms_norm_cuda_graph():
    x, residual = (torch.randn(16, 2048, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    weight = torch.randn(2048, device="cuda", dtype=torch.bfloat16)
    check_graph_replay(rms_norm, (x, weight, EPS, residual), x, rms_norm)
