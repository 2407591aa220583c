"""lora_add (PLoRA: a low-rank update on some row spans, in place) vs lora_add_ref and an fp64 reference.

There is no Triton kernel: both op tables run lora_add (cuBLAS's fused addmm epilogue). Rows outside the spans must
stay bit for bit what they were; inside, the error is held to the GEMM rule (at most 2x the same-dtype reference's
error + 1e-5). fp32 and fp16 on the CPU, bf16 on CUDA.
"""

import pytest
import torch

from hovle.kernels.lora import lora_add, lora_add_ref
from tests.kernels.support import bits
from tests.support import kernel_device, requires_cuda

pytestmark = pytest.mark.gpu  # make gpu-check runs these

DEV = kernel_device()
ALL_DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=requires_cuda)]


def inputs(t, k, n, r, dtype, gen):
    """y as the base projection's output (a view of a wider buffer: rows strided), x its input, A and B."""
    y = torch.randn(t, n + 6, generator=gen)[:, :n]
    x = torch.randn(t, k, generator=gen)
    a = torch.randn(r, k, generator=gen) / k**0.5
    b = torch.randn(n, r, generator=gen) / r**0.5
    return tuple(v.to(DEV, dtype) for v in (y, x, a, b))


def fp64_lora(y, x, a, b, scale, spans):
    out = y.double().clone()
    for s, e in spans:
        out[s:e] += scale * (x[s:e].double() @ a.double().t()) @ b.double().t()  # (e - s, r) @ (r, N)
    return out


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize(
    "spans", [[(0, 9)], [(2, 5), (7, 30)], [(4, 4), (31, 32)], []], ids=["all", "two", "empty+last", "none"]
)
def test_lora_add_matches_reference(dtype, spans):
    gen = torch.Generator().manual_seed(len(spans))
    t, k, n, r, scale = 32, 96, 80, 8, 0.5
    y, x, a, b = inputs(t, k, n, r, dtype, gen)
    want_y = lora_add_ref(y.clone(), x, a, b, scale, spans)
    before = y.clone()
    got = lora_add(y, x, a, b, scale, spans)
    assert got is y  # updated in place, the same tensor returned
    inside = torch.zeros(t, dtype=torch.bool)
    for s, e in spans:
        inside[s:e] = True
    assert torch.equal(bits(y[~inside]), bits(before[~inside]))  # rows outside the spans untouched
    exact = fp64_lora(before, x, a, b, scale, spans)
    err = (y.double() - exact).abs().max().item() if spans else 0.0
    ref_err = (want_y.double() - exact).abs().max().item() if spans else 0.0
    assert err <= 2 * ref_err + 1e-5, f"lora_add error {err:.3g} vs the reference's {ref_err:.3g}"


def test_both_tables_run_lora_add():
    from hovle.kernels import TORCH_OPS, get_ops

    assert TORCH_OPS.lora_add is lora_add and get_ops("triton", DEV).lora_add is lora_add


@requires_cuda
def test_lora_add_model_shape_cuda():
    """InternLM-XComposer2's wqkv (4096 -> 6144, rank 256) on 1225 image rows of a 1400-row prompt."""
    gen = torch.Generator().manual_seed(0)
    y, x, a, b = inputs(1400, 4096, 6144, 256, torch.bfloat16, gen)
    spans = [(35, 1260)]
    want = lora_add_ref(y.clone(), x, a, b, 2.0, spans)
    exact = fp64_lora(y, x, a, b, 2.0, spans)
    lora_add(y, x, a, b, 2.0, spans)
    assert (y.double() - exact).abs().max() <= 2 * (want.double() - exact).abs().max() + 1e-5
