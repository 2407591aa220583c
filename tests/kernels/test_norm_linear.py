"""norm_linear (residual add + RMSNorm + small-M matmul [+ SwiGLU]) vs its unfused reference and fp64.

The reference is the composition the model runs otherwise (rms_norm_ref, F.linear, swiglu_ref, each rounding to
the activation dtype); the kernel may differ only by the GEMM's summation order: error against fp64 at most 2x
PyTorch's own + 1e-5, and the residual sum bit-exact. Outputs start as NaN (poisoned torch.empty).
"""

import pytest
import torch
import torch.nn.functional as F

from hovle.kernels._triton import HAS_TRITON
from hovle.kernels.norm_linear import norm_linear, norm_linear_ref
from tests.kernels.support import bits
from tests.support import kernel_device, requires_cuda

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_TRITON, reason="needs triton")]


def _inputs(m, k, n, dtype, residual, device=None, seed=0):
    device = device or kernel_device()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    res = torch.randn(m, k, generator=g).to(device, dtype) if residual else None
    nw = (1 + 0.1 * torch.randn(k, generator=g)).to(device, dtype)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(device, dtype)
    return x, res, nw, w


def _fp64(x, res, nw, eps, w, swiglu):
    r = x.double() + (res.double() if res is not None else 0)
    normed = nw.double() * (r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps))
    y = normed @ w.double().T
    if swiglu:
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    return y


def check(m, k, n, dtype, residual, swiglu, device=None):
    x, res, nw, w = _inputs(m, k, n, dtype, residual, device)
    y, r = norm_linear(x, res, nw, 1e-5, w, swiglu)
    ref_y, ref_r = norm_linear_ref(x, res, nw, 1e-5, w, swiglu)
    assert y.shape == ref_y.shape and y.dtype == dtype
    assert torch.equal(bits(r), bits(ref_r))
    gold = _fp64(x, res, nw, 1e-5, w, swiglu)
    err, ref_err = (y.double() - gold).abs().max().item(), (ref_y.double() - gold).abs().max().item()
    assert err <= 2 * ref_err + 1e-5, f"kernel error {err:.3g} vs PyTorch's {ref_err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m, k, n", [(1, 64, 96), (3, 200, 40), (17, 128, 256), (64, 96, 33)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("swiglu", [False, True])
def test_matches_reference(m, k, n, dtype, residual, swiglu):
    check(m, k, n + (n % 2 if swiglu else 0), dtype, residual, swiglu)


def test_every_tuning_config(monkeypatch):
    from hovle.kernels import norm_linear as mod

    for config in mod._configs():
        monkeypatch.setattr(mod._norm_linear_kernel, "configs", [config])
        check(5, 300, 70, torch.float16, True, True)


def test_rejects_bad_inputs():
    x, res, nw, w = _inputs(2, 64, 32, torch.float32, True)
    with pytest.raises(ValueError, match="rows; this kernel serves 1..64"):
        norm_linear(torch.zeros(65, 64, device=x.device), None, nw, 1e-5, w)
    with pytest.raises(ValueError, match="weight must be"):
        norm_linear(x, res, nw, 1e-5, w[:, :10])
    with pytest.raises(ValueError, match="even N"):
        norm_linear(x, res, nw, 1e-5, w[:31], swiglu=True)


@requires_cuda
@pytest.mark.parametrize("m", [1, 8, 64])
@pytest.mark.parametrize("k, n, swiglu", [(2048, 4096, False), (2048, 16384, True), (2048, 92553, False)])
def test_model_shapes_bf16_cuda(m, k, n, swiglu):
    check(m, k, n, torch.bfloat16, True, swiglu, device="cuda")
