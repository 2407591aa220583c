"""Triton rotary/rotate vs rotary_ref/rotate_ref: bit-exact (same fp32 op order, no FMA contraction)."""

import pytest
import torch

from hovle.kernels.rotary import rotary, rotary_ref, rotate, rotate_ref
from tests.kernels.support import bits, check_graph_replay
from tests.support import kernel_device, requires_cuda

pytestmark = pytest.mark.gpu  # make gpu-check runs these

DEV = kernel_device()
ALL_DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=requires_cuda)]


def rope_tables(t: int, d: int, dtype: torch.dtype, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Real rotate-half tables (concat(freqs, freqs)) at random positions, in the activation dtype."""
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, d, 2).float() / d)
    freqs = torch.randint(0, 5000, (t,), generator=gen).float()[:, None] * inv_freq  # (T, D/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (T, D)
    return angles.cos().to(DEV, dtype), angles.sin().to(DEV, dtype)


def qkv_views(t, hq, hkv, d, dtype, gen):
    """q (T, Hq, D) and k (T, Hkv, D) as strided views of one fused (T, (Hq + 2 Hkv) D) projection output."""
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=gen).to(DEV, dtype)
    return qkv[:, : hq * d].view(t, hq, d), qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("d", [64, 80, 128])
@pytest.mark.parametrize("t, hq, hkv", [(1, 4, 4), (5, 4, 2), (9, 6, 2), (3, 16, 8), (2, 8, 2)])
def test_rotary_bit_exact(dtype, d, t, hq, hkv):
    gen = torch.Generator().manual_seed(t * 100 + hq * 10 + hkv + d)
    q, k = qkv_views(t, hq, hkv, d, dtype, gen)
    cos, sin = rope_tables(t, d, dtype, gen)
    q_out, k_out = rotary(q, k, cos, sin)
    q_ref, k_ref = rotary_ref(q, k, cos, sin)
    assert q_out.is_contiguous() and k_out.is_contiguous()
    assert torch.equal(bits(q_out), bits(q_ref)) and torch.equal(bits(k_out), bits(k_ref))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rotate_general_tables(dtype):
    """Unrelated cos/sin halves and fp32 tables on fp16 data: the kernel must not assume concat(freqs, freqs)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 3, 2, 64, generator=gen).to(DEV, dtype)[:, :, 1]  # (T, H, D) with a head stride of 2D
    cos, sin = (torch.randn(6, 64, generator=gen).to(DEV) for _ in range(2))
    assert torch.equal(bits(rotate(x, cos, sin)), bits(rotate_ref(x, cos, sin)))


def test_rotary_empty_batch():
    q, k = torch.randn(0, 4, 64, device=DEV), torch.randn(0, 2, 64, device=DEV)
    cos = torch.randn(0, 64, device=DEV)
    q_out, k_out = rotary(q, k, cos, cos)
    assert q_out.shape == q.shape and k_out.shape == k.shape


def test_rotary_registered_ops():
    gen = torch.Generator().manual_seed(2)
    q, k = qkv_views(3, 4, 2, 64, torch.float32, gen)
    cos, sin = rope_tables(3, 64, torch.float32, gen)
    torch.library.opcheck(torch.ops.hovle.rotary.default, (q, k, cos, sin))
    torch.library.opcheck(torch.ops.hovle.rotate.default, (q, cos, sin))
    compiled = torch.compile(rotary, backend="aot_eager", fullgraph=True)
    for a, b in zip(compiled(q, k, cos, sin), rotary(q, k, cos, sin)):
        assert torch.equal(bits(a), bits(b))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(q=torch.randn(4, 2, 2, 16)), "q must be a"),
        (dict(q=torch.randn(4, 16, 2).transpose(1, 2)), "q must be .* contiguous last dim"),
        (dict(k=torch.randn(4, 2, 16).double()), "k must be .*float64"),
        (dict(q=torch.randn(4, 2, 15), k=torch.randn(4, 2, 15)), "even head dim D; got D=15"),
        (dict(cos=torch.randn(4, 8)), r"cos must be a float \(T, D\) = \(4, 16\)"),
        (dict(sin=torch.randn(5, 16)), r"sin must be .* got shape \(5, 16\)"),
        (dict(sin=None), "cos and sin tables are required; got cos=Tensor, sin=NoneType"),
        (dict(cos=torch.randn(4, 16, device="meta")), "cos is on meta"),
    ],
)
def test_rotary_rejects_bad_input(kwargs, match):
    args = dict(q=torch.randn(4, 2, 16), k=torch.randn(4, 1, 16), cos=torch.randn(4, 16), sin=torch.randn(4, 16))
    with pytest.raises(ValueError, match=match):
        rotary(**(args | kwargs))


def test_rotary_rejects_device_mismatch():
    cos = torch.randn(4, 16)
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        rotary(torch.randn(4, 2, 16), torch.randn(4, 1, 16, device="meta"), cos, cos)


@requires_cuda
@pytest.mark.parametrize("t", [1, 4096])
def test_rotary_model_shape_cuda(t):
    gen = torch.Generator().manual_seed(t)
    q, k = qkv_views(t, 16, 8, 128, torch.bfloat16, gen)
    cos, sin = rope_tables(t, 128, torch.bfloat16, gen)
    for a, b in zip(rotary(q, k, cos, sin), rotary_ref(q, k, cos, sin)):
        assert torch.equal(bits(a), bits(b))


@requires_cuda
def test_rotary_cuda_graph():
    gen = torch.Generator().manual_seed(0)
    q, k = qkv_views(16, 16, 8, 128, torch.bfloat16, gen)
    cos, sin = rope_tables(16, 128, torch.bfloat16, gen)
    check_graph_replay(rotary, (q, k, cos, sin), q, rotary_ref)
