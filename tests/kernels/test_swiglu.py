"""Triton swiglu vs swiglu_ref and an fp64 reference (CPU interpreter at small shapes; full shapes on CUDA)."""

import pytest
import torch
import torch.nn.functional as F

from hovle.kernels.swiglu import swiglu, swiglu_ref
from tests.support import kernel_device, requires_cuda

pytestmark = pytest.mark.gpu  # make gpu-check runs these

DEV = kernel_device()
ALL_DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=requires_cuda)]
# (T, I): one decode token, odd widths (partial blocks), many tokens (wide-block config), the model's I.
SHAPES = [(1, 64), (7, 300), (70, 40), (2, 8192)]


def fp64_swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.double().chunk(2, dim=-1)
    return F.silu(gate) * up


def check(gate_up: torch.Tensor) -> None:
    out, ref = swiglu(gate_up), swiglu_ref(gate_up)
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    exact = fp64_swiglu(gate_up)
    err = (out.double() - exact).abs().max().item()
    ref_err = (ref.double() - exact).abs().max().item()
    assert err <= 2 * ref_err + 1e-5, f"kernel error {err} vs reference error {ref_err}"


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("strided", [False, True])
def test_swiglu_matches_reference(dtype, shape, strided):
    t, i = shape
    gen = torch.Generator().manual_seed(t * 1000 + i + strided)
    # Strided: the (T, 2I) rows of a wider buffer, as a slice of a bigger projection output would be.
    full = (4 * torch.randn(t, 2 * i + (40 if strided else 0), generator=gen)).to(DEV, dtype)
    check(full[:, : 2 * i])


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # numpy, under the interpreter
def test_swiglu_extreme_gates():
    """Large |gate|: exp(-gate) overflows to inf for very negative gates, silu must still be -0/+gate."""
    gate = torch.tensor([[-200.0, -90.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 90.0]], device=DEV)
    check(torch.cat((gate, torch.full_like(gate, 1.5)), dim=1))


def test_swiglu_empty_batch():
    assert swiglu(torch.randn(0, 16, device=DEV)).shape == (0, 8)


def test_swiglu_registered_op():
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(1)).to(DEV)
    torch.library.opcheck(torch.ops.hovle.swiglu.default, (x,))
    assert torch.equal(torch.compile(swiglu, backend="aot_eager", fullgraph=True)(x), swiglu(x))


@pytest.mark.parametrize(
    "gate_up, error, match",
    [
        (torch.randn(4, 7), ValueError, r"2I even; got shape \(4, 7\)"),
        (torch.randn(8), ValueError, "gate_up must be a 2-D"),
        (torch.randn(8, 4).t(), ValueError, "contiguous last dim"),
        (torch.randn(2, 8).double(), TypeError, "float64"),
        (torch.ones(2, 8, dtype=torch.int32), TypeError, "int32"),
    ],
)
def test_swiglu_rejects_bad_input(gate_up, error, match):
    with pytest.raises(error, match=match):
        swiglu(gate_up)


@requires_cuda
@pytest.mark.parametrize("t", [1, 4096])
def test_swiglu_model_shape_cuda(t):
    gate_up = torch.randn(t, 2 * 8192, generator=torch.Generator().manual_seed(t)).to("cuda", torch.bfloat16)
    check(gate_up)


@requires_cuda
def test_swiglu_cuda_graph():
    gate_up = torch.randn(16, 2 * 8192, device="cuda", dtype=torch.bfloat16)
    swiglu(gate_up)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = swiglu(gate_up)
    gate_up.copy_(torch.randn_like(gate_up))
    graph.replay()
    assert torch.equal(out, swiglu(gate_up))
