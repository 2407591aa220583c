"""Triton gelu (erf, tanh, quick) vs gelu_ref and an fp64 reference, on any shape and strides."""

import math

import pytest
import torch

from hovle.kernels._triton import HAS_TRITON
from hovle.kernels.gelu import KINDS, gelu, gelu_ref
from tests.kernels.support import bits
from tests.support import kernel_device, requires_cuda

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_TRITON, reason="needs triton"),
    pytest.mark.filterwarnings("ignore:overflow encountered in exp"),  # the interpreter's numpy: exp(-a x) -> inf
]

DEV = kernel_device()
CPU_DTYPES = [torch.float32, torch.float16]
ALL_DTYPES = CPU_DTYPES + [pytest.param(torch.bfloat16, marks=requires_cuda)]


def fp64_gelu(x: torch.Tensor, kind: str) -> torch.Tensor:
    x = x.double()
    if kind == "quick":
        return x * torch.sigmoid(1.702 * x)
    if kind == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def inputs(shape, dtype, layout: str, gen: torch.Generator) -> torch.Tensor:
    """Values spread over [-12, 12] (both tails); "contiguous", a column slice of a wider buffer ("sliced") or a
    transposed view ("transposed")."""
    if layout == "sliced":
        return (torch.randn(*shape[:-1], shape[-1] + 5, generator=gen) * 4).to(DEV, dtype)[..., : shape[-1]]
    if layout == "transposed":
        return (torch.randn(*shape[::-1], generator=gen) * 4).to(DEV, dtype).transpose(0, -1)  # reversed -> shape
    return (torch.randn(*shape, generator=gen) * 4).to(DEV, dtype)


def check(x: torch.Tensor, kind: str) -> None:
    y = gelu(x, kind)
    y_ref = gelu_ref(x, kind)
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
    exact = fp64_gelu(x, kind)
    err = (y.double() - exact).abs().max().item()  # an unwritten (NaN-poisoned) element fails here
    ref_err = (y_ref.double() - exact).abs().max().item()
    assert err <= 2 * ref_err + 1e-5, f"{kind}: kernel error {err} vs reference error {ref_err}"


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "shape, layout",
    [((7,), "contiguous"), ((3, 300), "contiguous"), ((5, 129), "sliced"), ((2, 5, 33), "transposed")],
    ids=str,
)
def test_gelu_matches_reference(kind, dtype, shape, layout):
    gen = torch.Generator().manual_seed(hash((kind, shape, layout)) % 2**31)
    check(inputs(shape, dtype, layout, gen), kind)


@pytest.mark.parametrize("kind", KINDS)
def test_gelu_extremes(kind):
    """Large magnitudes (exp overflows to inf on the negative side: -0.0, the limit), zeros and fp16's largest."""
    x = torch.tensor([-65504.0, -1e4, -100.0, -20.0, -0.0, 0.0, 1e-3, 20.0, 100.0, 65504.0], device=DEV)
    for dtype in (torch.float32, torch.float16):
        y, y_ref = gelu(x.to(dtype), kind), gelu_ref(x.to(dtype), kind)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, y_ref, rtol=2e-6, atol=0)  # fp32's last bits may differ; half is exact


def test_gelu_empty():
    assert gelu(torch.randn(0, 8, device=DEV)).shape == (0, 8)


def test_gelu_registered_op():
    x = torch.randn(4, 96, device=DEV)
    torch.library.opcheck(torch.ops.hovle.gelu.default, (x, "quick"))
    compiled = torch.compile(gelu, backend="aot_eager", fullgraph=True)
    assert torch.equal(bits(compiled(x.t(), "tanh")), bits(gelu(x.t(), "tanh")))


def test_the_triton_table_runs_the_kernel():
    from hovle.kernels import TORCH_OPS, get_ops

    assert get_ops("triton", DEV).gelu is gelu and TORCH_OPS.gelu is gelu_ref


def test_gelu_rejects_bad_input():
    with pytest.raises(ValueError, match="gelu kind 'relu'"):
        gelu(torch.randn(4, device=DEV), "relu")
    with pytest.raises(TypeError, match="x must be a float16, bfloat16 or float32 tensor; got torch.float64"):
        gelu(torch.randn(4, device=DEV, dtype=torch.float64))


@requires_cuda
@pytest.mark.parametrize("kind", KINDS)
def test_gelu_model_shape_cuda(kind):
    """A CLIP ViT-L MLP's hidden activations for 8 crops: (8 * 577, 4096) in bf16."""
    gen = torch.Generator().manual_seed(0)
    check((torch.randn(8 * 577, 4096, generator=gen) * 3).to("cuda", torch.bfloat16), kind)
