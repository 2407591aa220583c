"""Triton layer_norm vs layer_norm_ref and an fp64 reference (CPU interpreter at small shapes; full shapes on CUDA)."""

import pytest
import torch

from hovle.kernels._triton import HAS_TRITON
from hovle.kernels.layer_norm import layer_norm, layer_norm_ref
from tests.kernels.support import bits, check_graph_replay
from tests.support import kernel_device, requires_cuda

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_TRITON, reason="needs triton")]

DEV = kernel_device()
EPS = 1e-5
CPU_DTYPES = [torch.float32, torch.float16]
ALL_DTYPES = CPU_DTYPES + [pytest.param(torch.bfloat16, marks=requires_cuda)]
# (T, C): one row, an odd width, narrow rows packed several per program with a partial last block, and a row wider
# than the 8192 register limit (three-pass path).
SHAPES = [(1, 64), (3, 300), (17, 48), (2, 9000)]


def rows(t: int, c: int, dtype: torch.dtype, strided: bool, gen: torch.Generator) -> torch.Tensor:
    """(T, C) random rows off zero (a mean to remove); strided ones are a column slice of a wider buffer."""
    full = torch.randn(t, c + 24 if strided else c, generator=gen) + 2.0
    return full.to(DEV, dtype)[:, :c]


def fp64_layer_norm(x, weight, bias, eps, residual):
    r = x.double() + (residual.double() if residual is not None else 0.0)
    centred = r - r.mean(-1, keepdim=True)
    return centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * weight.double() + bias.double()


def check(x, weight, bias, residual):
    y, new_res = layer_norm(x, weight, bias, EPS, residual)
    y_ref, res_ref = layer_norm_ref(x, weight, bias, EPS, residual)
    assert y.shape == y_ref.shape and y.dtype == x.dtype and y.is_contiguous()
    assert torch.equal(bits(new_res), bits(res_ref))  # the add is one rounding: bit-exact (x's copy without one)
    assert new_res.data_ptr() != x.data_ptr()  # a fresh tensor, never an alias of x
    exact = fp64_layer_norm(x, weight, bias, EPS, residual)
    err = (y.double() - exact).abs().max().item()  # an unwritten (NaN-poisoned) element fails here
    ref_err = (y_ref.double() - exact).abs().max().item()
    assert err <= 2 * ref_err + 1e-5, f"kernel error {err} vs reference error {ref_err}"


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("strided", [False, True])
def test_layer_norm_matches_reference(dtype, shape, with_residual, strided):
    gen = torch.Generator().manual_seed(hash((shape, with_residual, strided)) % 2**31)
    t, c = shape
    x = rows(t, c, dtype, strided, gen) * 3
    residual = rows(t, c, dtype, strided, gen) if with_residual else None
    weight = (1 + 0.5 * torch.randn(c, generator=gen)).to(DEV, dtype)
    bias = torch.randn(c, generator=gen).to(DEV, dtype)
    check(x, weight, bias, residual)


def test_layer_norm_params_in_fp32_on_half_rows():
    """fp32 weight and bias on fp16 activations: the affine runs in fp32, y stays in x's dtype."""
    gen = torch.Generator().manual_seed(3)
    x, residual = (torch.randn(4, 256, generator=gen).to(DEV, torch.float16) for _ in range(2))
    check(x, torch.randn(256, generator=gen).to(DEV), torch.randn(256, generator=gen).to(DEV), residual)


def test_layer_norm_far_from_zero():
    """Rows with a mean 1000x their spread: the variance around the mean, not E[r^2] - mean^2."""
    gen = torch.Generator().manual_seed(4)
    x = (1000 + torch.randn(3, 512, generator=gen)).to(DEV)
    check(x, torch.ones(512, device=DEV), torch.zeros(512, device=DEV), None)


def test_layer_norm_empty_batch():
    x = torch.randn(0, 64, device=DEV)
    y, r = layer_norm(x, torch.ones(64, device=DEV), torch.zeros(64, device=DEV), EPS, x.clone())
    assert y.shape == (0, 64) and r.shape == (0, 64)


def test_layer_norm_registered_op():
    gen = torch.Generator().manual_seed(5)
    x, residual = (torch.randn(3, 128, generator=gen).to(DEV) for _ in range(2))
    weight, bias = (torch.randn(128, generator=gen).to(DEV) for _ in range(2))
    torch.library.opcheck(torch.ops.hovle.layer_norm.default, (x, weight, bias, EPS, residual))
    compiled = torch.compile(layer_norm, backend="aot_eager", fullgraph=True)
    for a, b in zip(compiled(x, weight, bias, EPS, residual), layer_norm(x, weight, bias, EPS, residual)):
        assert torch.equal(bits(a), bits(b))


def test_the_triton_table_runs_the_kernel():
    from hovle.kernels import TORCH_OPS, get_ops

    assert get_ops("triton", DEV).layer_norm is layer_norm and TORCH_OPS.layer_norm is layer_norm_ref


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.randn(2, 3, 8)), "x must be a 2-D"),
        (dict(x=torch.randn(4, 8).t()), "contiguous last dim"),
        (dict(x=torch.randn(8, 4).double()), "float64"),
        (dict(weight=torch.randn(5)), r"weight must be a contiguous \(4,\)"),
        (dict(bias=torch.randn(4, dtype=torch.float64)), "bias must be"),
        (dict(bias=torch.randn(8)[::2]), "bias must be a contiguous"),
        (dict(residual=torch.randn(8, 5)), "residual must match x"),
        (dict(residual=torch.randn(8, 4, dtype=torch.float16)), "residual must match x"),
        (dict(residual=torch.randn(8, 4, device="meta")), "residual is on meta"),
        (dict(bias=torch.randn(4, device="meta")), "bias is on meta"),
    ],
)
def test_layer_norm_rejects_bad_input(kwargs, match):
    args = dict(x=torch.randn(8, 4), weight=torch.randn(4), bias=torch.randn(4), eps=EPS, residual=None) | kwargs
    with pytest.raises(ValueError, match=match):
        layer_norm(**args)


@requires_cuda
@pytest.mark.parametrize("t", [1, 577, 8 * 577])
@pytest.mark.parametrize("c", [1024, 768])
def test_layer_norm_model_shape_cuda(t, c):
    """CLIP ViT-L (C 1024, 577 tokens a crop) and DeBERTa-base (C 768) rows in bf16."""
    gen = torch.Generator().manual_seed(t)
    x, residual = (torch.randn(t, c, generator=gen).to("cuda", torch.bfloat16) for _ in range(2))
    weight, bias = (torch.randn(c, generator=gen).to("cuda", torch.bfloat16) for _ in range(2))
    check(x, weight, bias, residual)


@requires_cuda
def test_layer_norm_cuda_graph():
    x, residual = (torch.randn(16, 1024, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    weight, bias = (torch.randn(1024, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    check_graph_replay(layer_norm, (x, weight, bias, EPS, residual), x, layer_norm)
