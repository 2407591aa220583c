"""Triton kv_store vs kv_store_ref: bit-exact on NaN-poisoned paged caches, with and without the fused rotation.

The interpreter truncates fp32 -> bf16 where the GPU rounds to nearest even, so bf16 runs through the kernel on the
GPU only; on the CPU the kernel's fp32 math on bf16-valued inputs, rounded the way the GPU rounds, is checked
against the bf16 reference instead.
"""

import pytest
import torch

from hovle.kernels.kv_store import kv_store, kv_store_ref
from tests.kernels.support import bits
from tests.support import kernel_device, requires_cuda

pytestmark = pytest.mark.gpu  # make gpu-check runs these

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


def targets(lens: list[int], prefix: list[int], page: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks, offsets) of sequences adding `lens` tokens after `prefix` cached ones, each through its own shuffled
    pages of `page` positions (what the engine resolves through a sequence's page table)."""
    needed = [-(-(p + n) // page) for p, n in zip(prefix, lens)]
    order = torch.randperm(sum(needed), generator=torch.Generator().manual_seed(seed)).tolist()
    blocks, offsets = [], []
    for p, n, pages in zip(prefix, lens, needed):
        table, order = order[:pages], order[pages:]
        blocks += [table[pos // page] for pos in range(p, p + n)]
        offsets += [pos % page for pos in range(p, p + n)]
    return torch.tensor(blocks, device=DEV), torch.tensor(offsets, device=DEV)


def poisoned_caches(layers, n_blocks, hkv, page, d, dtype):
    """Two (L, N, Hkv, P, D) NaN caches; the op gets layer 1, a view inside the layered tensor, as the engine does."""
    return [torch.full((layers, n_blocks, hkv, page, d), float("nan"), dtype=dtype, device=DEV) for _ in range(2)]


def check_store(k, v, blocks, offsets, cache_dtype, rotate, page=8):
    t, hkv, d = k.shape
    cos, sin = rope_tables(torch.arange(t) * 37 + 5, d, k.dtype) if rotate else (None, None)
    caches = poisoned_caches(3, int(blocks.max()) + 2, hkv, page, d, cache_dtype)
    ref_caches = [c.clone() for c in caches]
    kv_store(k, v, caches[0][1], caches[1][1], blocks, offsets, cos, sin)
    kv_store_ref(k, v, ref_caches[0][1], ref_caches[1][1], blocks, offsets, cos, sin)
    for got, want in zip(caches, ref_caches):  # the whole layered tensor: other layers must stay untouched
        assert torch.equal(bits(got), bits(want))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("d", [64, 80, 128])
@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("hkv", [1, 2, 8])
def test_kv_store_prefill_bit_exact(dtype, d, rotate, hkv):
    """Three sequences of unequal lengths (one with a cached prefix) packed into one forward."""
    gen = torch.Generator().manual_seed(d * 10 + hkv + rotate)
    blocks, offsets = targets(lens=[5, 1, 11], prefix=[0, 7, 3], page=8, seed=d + hkv)
    k, v = qkv_views(len(offsets), 2 * hkv, hkv, d, dtype, gen)
    check_store(k, v, blocks, offsets, dtype, rotate)


@pytest.mark.parametrize("rotate", [False, True])
def test_kv_store_decode_int32_targets(rotate):
    """One token per sequence at different positions; int32 index tensors."""
    gen = torch.Generator().manual_seed(7)
    k, v = qkv_views(4, 4, 2, 128, torch.float16, gen)
    blocks = torch.tensor([3, 0, 2, 1], dtype=torch.int32, device=DEV)
    offsets = torch.tensor([23, 0, 9, 14], dtype=torch.int32, device=DEV)
    check_store(k, v, blocks, offsets, torch.float16, rotate, page=24)


@pytest.mark.parametrize("rotate", [False, True])
def test_kv_store_casts_to_cache_dtype(rotate):
    """fp32 activations into an fp16 cache: rotate in fp32, round to k's dtype, then to the cache's."""
    gen = torch.Generator().manual_seed(8)
    blocks, offsets = targets(lens=[3, 2], prefix=[0, 4], page=4)
    k, v = qkv_views(5, 2, 2, 64, torch.float32, gen)
    check_store(k, v, blocks, offsets, torch.float16, rotate, page=4)


@pytest.mark.skipif(DEV != "cpu", reason="on the GPU bf16 runs through the kernel (test_kv_store_prefill_bit_exact)")
@pytest.mark.parametrize("d", [64, 128])
def test_kv_store_bf16_rounding_matches_the_reference_on_cpu(d):
    """The kernel's fp32 math on bf16-valued inputs, rounded to nearest even (the GPU's fp32 -> bf16 conversion),
    equals kv_store_ref in bf16: on the GPU the kernel's only bf16 step is that final rounding."""
    gen = torch.Generator().manual_seed(11 + d)
    blocks, offsets = targets(lens=[6, 1, 9], prefix=[2, 30, 0], page=16, seed=d)
    k, v = qkv_views(len(offsets), 16, 8, d, torch.bfloat16, gen)
    cos, sin = rope_tables(torch.arange(len(offsets)) * 911 + 3, d, torch.bfloat16)
    wide = poisoned_caches(1, int(blocks.max()) + 1, 8, 16, d, torch.float32)
    kv_store(k.float(), v.float(), wide[0][0], wide[1][0], blocks, offsets, cos.float(), sin.float())
    ref = poisoned_caches(1, int(blocks.max()) + 1, 8, 16, d, torch.bfloat16)
    kv_store_ref(k, v, ref[0][0], ref[1][0], blocks, offsets, cos, sin)
    for got, want in zip(wide, ref):
        written = ~want.isnan()  # the poison's NaN payload changes in the cast; compare where the op wrote
        assert torch.equal(written, ~got.isnan()) and written.sum() == 8 * len(offsets) * d
        assert torch.equal(bits(got.to(torch.bfloat16)[written]), bits(want[written]))  # torch's cast: RNE


def test_kv_store_skips_out_of_range_targets():
    """Targets outside the cache are not written (and nothing else is); in-range ones are stored normally."""
    gen = torch.Generator().manual_seed(9)
    k, v = qkv_views(4, 2, 2, 64, torch.float32, gen)
    blocks = torch.tensor([1, 4, 0, -1], device=DEV)
    offsets = torch.tensor([2, 0, 24, 3], device=DEV)
    caches = poisoned_caches(1, 4, 2, 24, 64, torch.float32)
    kv_store(k, v, caches[0][0], caches[1][0], blocks, offsets)
    ref = poisoned_caches(1, 4, 2, 24, 64, torch.float32)
    kv_store_ref(k[:1], v[:1], ref[0][0], ref[1][0], blocks[:1], offsets[:1])
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
    blocks, offsets = targets(lens=[3], prefix=[1], page=8)
    cos, sin = rope_tables(offsets.cpu(), 64, torch.float32)
    k_cache, v_cache = (torch.randn(2, 2, 8, 64, device=DEV) for _ in range(2))
    torch.library.opcheck(torch.ops.hovle.kv_store.default, (k, v, k_cache, v_cache, blocks, offsets, cos, sin))
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    torch.compile(kv_store, backend="aot_eager", fullgraph=True)(k, v, k_cache, v_cache, blocks, offsets, cos, sin)
    kv_store_ref(k, v, ref_k, ref_v, blocks, offsets, cos, sin)
    assert torch.equal(bits(k_cache), bits(ref_k)) and torch.equal(bits(v_cache), bits(ref_v))


def _args(**overrides):
    args = dict(
        k=torch.randn(3, 2, 16),
        v=torch.randn(3, 2, 16),
        k_cache=torch.randn(2, 2, 8, 16),
        v_cache=torch.randn(2, 2, 8, 16),
        blocks=torch.zeros(3, dtype=torch.int64),
        offsets=torch.arange(3),
        cos=None,
        sin=None,
    )
    return args | overrides


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(k=torch.randn(3, 32)), ValueError, "k must be a"),
        (dict(v=torch.randn(3, 2, 8)), ValueError, r"v must have k's shape \(3, 2, 16\)"),
        (dict(v=torch.randn(3, 16, 2).transpose(1, 2)), ValueError, "v must be .*contiguous last dim"),
        (dict(k_cache=torch.randn(2, 3, 8, 16)), ValueError, r"k_cache must be \(N_blocks, Hkv=2"),
        (dict(v_cache=torch.randn(2, 2, 8, 16).double()), TypeError, "v_cache must be .*float64"),
        (dict(v_cache=torch.randn(2, 2, 9, 16)), ValueError, "v_cache must have k_cache's shape"),
        (dict(blocks=torch.zeros(3)), ValueError, "blocks must be an int32/int64 tensor .*float32"),
        (dict(offsets=torch.arange(4)), ValueError, r"offsets must be an int32/int64 tensor of shape \(3,\)"),
        (dict(cos=torch.randn(3, 16)), ValueError, "cos and sin must be given together; sin is None"),
        (dict(cos=torch.randn(3, 8), sin=torch.randn(3, 8)), ValueError, r"cos must be a float \(T, D\)"),
        (dict(offsets=torch.arange(3, device="meta")), ValueError, "offsets is on meta but k is on cpu"),
    ],
)
def test_kv_store_rejects_bad_input(overrides, error, match):
    with pytest.raises(error, match=match):
        kv_store(**_args(**overrides))


@requires_cuda
@pytest.mark.parametrize("decode", [False, True])
def test_kv_store_model_shape_cuda(decode):
    """bf16 at the model shape (8 kv heads, D=128), on the GPU: bit-exact with the reference (RNE rounding)."""
    gen = torch.Generator().manual_seed(int(decode))
    lens = [1] * 64 if decode else [4096]
    blocks, offsets = targets(lens, prefix=[100 + i for i in range(len(lens))], page=64)
    k, v = qkv_views(len(offsets), 16, 8, 128, torch.bfloat16, gen)
    check_store(k, v, blocks, offsets, torch.bfloat16, rotate=True, page=64)


@requires_cuda
def test_kv_store_cuda_graph():
    gen = torch.Generator().manual_seed(0)
    k, v = qkv_views(8, 16, 8, 128, torch.bfloat16, gen)
    blocks, offsets = targets([1] * 8, prefix=list(range(8)), page=16)
    cos, sin = rope_tables(offsets.cpu(), 128, torch.bfloat16)
    k_cache, v_cache = (torch.zeros(8, 8, 16, 128, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    kv_store(k, v, k_cache, v_cache, blocks, offsets, cos, sin)
    k_before, offsets_before = k.clone(), offsets.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kv_store(k, v, k_cache, v_cache, blocks, offsets, cos, sin)
    k.copy_(torch.randn_like(k))
    offsets.add_(1)  # new targets, read on the device at replay
    graph.replay()
    ref_k, ref_v = (torch.zeros_like(k_cache) for _ in range(2))
    kv_store_ref(k_before, v, ref_k, ref_v, blocks, offsets_before, cos, sin)
    kv_store_ref(k, v, ref_k, ref_v, blocks, offsets, cos, sin)
    assert torch.equal(bits(k_cache), bits(ref_k)) and torch.equal(bits(v_cache), bits(ref_v))
