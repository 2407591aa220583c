"""Triton kv_store vs kv_store_ref: bit-exact on NaN-poisoned caches, with and without the fused rotation."""

import pytest
import torch

from kernels.kv_store import kv_store, kv_store_ref
from tests.conftest import kernel_device, requires_cuda
from tests.kernel_utils import bits

DEV = kernel_device()
ALL_DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=requires_cuda)]


def qkv_views(t, hq, hkv, d, dtype, gen):
    """k, v (T, Hkv, D) as strided views of one fused (T, (Hq + 2 Hkv) D) projection output."""
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=gen).to(DEV, dtype)
    k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    return k, qkv[:, (hq + hkv) * d :].view(t, hkv, d)


def rope_tables(positions: torch.Tensor, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, d, 2).float() / d)
    freqs = positions.float()[:, None] * inv_freq  # (T, D/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (T, D)
    return angles.cos().to(DEV, dtype), angles.sin().to(DEV, dtype)


def targets(lens: list[int], prefix: list[int], slots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """token_slots, token_pos for sequences adding `lens` tokens after `prefix` cached ones in `slots`."""
    token_slots = torch.cat([torch.full((n,), s) for n, s in zip(lens, slots)])
    token_pos = torch.cat([torch.arange(p, p + n) for p, n in zip(prefix, lens)])
    return token_slots.to(DEV), token_pos.to(DEV)


def poisoned_caches(layers, n_slots, hkv, s_max, d, dtype):
    """Two (L, N, Hkv, S, D) NaN caches; the op gets layer 1, a view inside the layered tensor, as the engine does."""
    return [torch.full((layers, n_slots, hkv, s_max, d), float("nan"), dtype=dtype, device=DEV) for _ in range(2)]


def check_store(k, v, token_slots, token_pos, cache_dtype, rotate, n_slots=4, s_max=24):
    t, hkv, d = k.shape
    cos, sin = rope_tables(token_pos.cpu() * 37 + 5, d, k.dtype) if rotate else (None, None)
    caches = poisoned_caches(3, n_slots, hkv, s_max, d, cache_dtype)
    ref_caches = [c.clone() for c in caches]
    kv_store(k, v, caches[0][1], caches[1][1], token_slots, token_pos, cos, sin)
    kv_store_ref(k, v, ref_caches[0][1], ref_caches[1][1], token_slots, token_pos, cos, sin)
    for got, want in zip(caches, ref_caches):  # the whole layered tensor: other layers must stay untouched
        assert torch.equal(bits(got), bits(want))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("d", [64, 80, 128])
@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("hkv", [1, 2, 8])
def test_kv_store_prefill_bit_exact(dtype, d, rotate, hkv):
    """Three sequences of unequal lengths (one with a cached prefix) packed into one forward."""
    gen = torch.Generator().manual_seed(d * 10 + hkv + rotate)
    token_slots, token_pos = targets(lens=[5, 1, 11], prefix=[0, 7, 3], slots=[2, 0, 3])
    k, v = qkv_views(len(token_pos), 2 * hkv, hkv, d, dtype, gen)
    check_store(k, v, token_slots, token_pos, dtype, rotate)


@pytest.mark.parametrize("rotate", [False, True])
def test_kv_store_decode_int32_targets(rotate):
    """One token per sequence at different positions; int32 index tensors."""
    gen = torch.Generator().manual_seed(7)
    k, v = qkv_views(4, 4, 2, 128, torch.float16, gen)
    token_slots = torch.tensor([3, 0, 2, 1], dtype=torch.int32, device=DEV)
    token_pos = torch.tensor([23, 0, 9, 14], dtype=torch.int32, device=DEV)
    check_store(k, v, token_slots, token_pos, torch.float16, rotate)


@pytest.mark.parametrize("rotate", [False, True])
def test_kv_store_casts_to_cache_dtype(rotate):
    """fp32 activations into an fp16 cache: rotate in fp32, round to k's dtype, then to the cache's."""
    gen = torch.Generator().manual_seed(8)
    token_slots, token_pos = targets(lens=[3, 2], prefix=[0, 4], slots=[1, 2])
    k, v = qkv_views(5, 2, 2, 64, torch.float32, gen)
    check_store(k, v, token_slots, token_pos, torch.float16, rotate)


def test_kv_store_skips_out_of_range_targets():
    """Targets outside the cache are not written (and nothing else is); in-range ones are stored normally."""
    gen = torch.Generator().manual_seed(9)
    k, v = qkv_views(4, 2, 2, 64, torch.float32, gen)
    token_slots = torch.tensor([1, 4, 0, -1], device=DEV)
    token_pos = torch.tensor([2, 0, 24, 3], device=DEV)
    caches = poisoned_caches(1, 4, 2, 24, 64, torch.float32)
    kv_store(k, v, caches[0][0], caches[1][0], token_slots, token_pos)
    ref = poisoned_caches(1, 4, 2, 24, 64, torch.float32)
    kv_store_ref(k[:1], v[:1], ref[0][0], ref[1][0], token_slots[:1], token_pos[:1])
    for got, want in zip(caches, ref):
        assert torch.equal(bits(got), bits(want))


def test_kv_store_empty_batch():
    k_cache, v_cache = poisoned_caches(1, 2, 2, 8, 64, torch.float32)
    empty = torch.zeros(0, dtype=torch.int64, device=DEV)
    kv_store(torch.randn(0, 2, 64, device=DEV), torch.randn(0, 2, 64, device=DEV), k_cache[0], v_cache[0], empty, empty)
    assert k_cache.isnan().all() and v_cache.isnan().all()


def test_kv_store_registered_op():
    gen = torch.Generator().manual_seed(10)
    k, v = qkv_views(3, 2, 2, 64, torch.float32, gen)
    token_slots, token_pos = targets(lens=[3], prefix=[1], slots=[1])
    cos, sin = rope_tables(token_pos.cpu(), 64, torch.float32)
    k_cache, v_cache = (torch.randn(2, 2, 8, 64, device=DEV) for _ in range(2))
    torch.library.opcheck(torch.ops.hovle.kv_store.default, (k, v, k_cache, v_cache, token_slots, token_pos, cos, sin))
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    torch.compile(kv_store, backend="aot_eager", fullgraph=True)(
        k, v, k_cache, v_cache, token_slots, token_pos, cos, sin
    )
    kv_store_ref(k, v, ref_k, ref_v, token_slots, token_pos, cos, sin)
    assert torch.equal(bits(k_cache), bits(ref_k)) and torch.equal(bits(v_cache), bits(ref_v))


def _args(**overrides):
    args = dict(
        k=torch.randn(3, 2, 16), v=torch.randn(3, 2, 16), k_cache=torch.randn(2, 2, 8, 16),
        v_cache=torch.randn(2, 2, 8, 16), token_slots=torch.zeros(3, dtype=torch.int64),
        token_pos=torch.arange(3), cos=None, sin=None,
    )  # fmt: skip
    return args | overrides


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(k=torch.randn(3, 32)), ValueError, "k must be a"),
        (dict(v=torch.randn(3, 2, 8)), ValueError, r"v must have k's shape \(3, 2, 16\)"),
        (dict(v=torch.randn(3, 16, 2).transpose(1, 2)), ValueError, "v must be .*contiguous last dim"),
        (dict(k_cache=torch.randn(2, 3, 8, 16)), ValueError, r"k_cache must be \(N_slots, Hkv=2"),
        (dict(v_cache=torch.randn(2, 2, 8, 16).double()), TypeError, "v_cache must be .*float64"),
        (dict(v_cache=torch.randn(2, 2, 9, 16)), ValueError, "v_cache must have k_cache's shape"),
        (dict(token_slots=torch.zeros(3)), ValueError, "token_slots must be a .*float32"),
        (dict(token_pos=torch.arange(4)), ValueError, r"token_pos must be a \(3,\)"),
        (dict(cos=torch.randn(3, 16)), ValueError, "cos and sin must be given together; sin is None"),
        (dict(cos=torch.randn(3, 8), sin=torch.randn(3, 8)), ValueError, r"cos must be a float \(T, D\)"),
        (dict(token_pos=torch.arange(3, device="meta")), ValueError, "token_pos is on meta but k is on cpu"),
    ],
)
def test_kv_store_rejects_bad_input(overrides, error, match):
    with pytest.raises(error, match=match):
        kv_store(**_args(**overrides))


@requires_cuda
@pytest.mark.parametrize("decode", [False, True])
def test_kv_store_model_shape_cuda(decode):
    gen = torch.Generator().manual_seed(decode)
    lens = [1] * 64 if decode else [4096]
    token_slots, token_pos = targets(lens, prefix=[100 + i for i in range(len(lens))], slots=list(range(len(lens))))
    k, v = qkv_views(len(token_pos), 16, 8, 128, torch.bfloat16, gen)
    check_store(k, v, token_slots, token_pos, torch.bfloat16, rotate=True, n_slots=64, s_max=4300)


@requires_cuda
def test_kv_store_cuda_graph():
    gen = torch.Generator().manual_seed(0)
    k, v = qkv_views(8, 16, 8, 128, torch.bfloat16, gen)
    token_slots, token_pos = targets([1] * 8, prefix=list(range(8)), slots=list(range(8)))
    cos, sin = rope_tables(token_pos.cpu(), 128, torch.bfloat16)
    k_cache, v_cache = (torch.zeros(8, 8, 16, 128, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    kv_store(k, v, k_cache, v_cache, token_slots, token_pos, cos, sin)
    k_before, pos_before = k.clone(), token_pos.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kv_store(k, v, k_cache, v_cache, token_slots, token_pos, cos, sin)
    k.copy_(torch.randn_like(k))
    token_pos.add_(1)  # new targets, read on the device at replay
    graph.replay()
    ref_k, ref_v = (torch.zeros_like(k_cache) for _ in range(2))
    kv_store_ref(k_before, v, ref_k, ref_v, token_slots, pos_before, cos, sin)
    kv_store_ref(k, v, ref_k, ref_v, token_slots, token_pos, cos, sin)
    assert torch.equal(bits(k_cache), bits(ref_k)) and torch.equal(bits(v_cache), bits(ref_v))
