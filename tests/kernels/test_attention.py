"""Triton prefill attention vs attention_ref and an fp64 reference (the kernel's error <= 2x PyTorch's own + 1e-5).

Keys live in shuffled pages whose unowned positions hold NaN (inf in some cases) and whose table rows end in
garbage page ids, so a read past a sequence's keys shows. Page sizes cover tiles inside one page (P a multiple of
BLOCK_N) and tiles straddling pages. Interpreter cases (CPU) stay tiny; bf16, the model shape (16 q / 8 kv heads,
D=128) and long sequences run on CUDA.
"""

import pytest
import torch

from hovle.kernels._triton import HAS_TRITON
from hovle.kernels.attention import attention, attention_ref
from tests.kernels.support import attention_fp64, attention_inputs
from tests.support import requires_cuda

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_TRITON, reason="needs triton")]


def check(lens, prefixes, hq, hkv, d, rope, dtype, device=None, max_seqlen=-1, page=16, poison=float("nan")):
    args, (dense_k, dense_v) = attention_inputs(
        lens, prefixes, hq, hkv, d, dtype, rope, device, page=page, poison=poison
    )
    q, k_cache, v_cache, cu, prefix, tables, cos, sin = args
    max_seqlen = max(lens) if max_seqlen == -1 else max_seqlen
    out = attention(q, k_cache, v_cache, cu, prefix, tables, None, cos, sin, max_seqlen)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    exact = attention_fp64(q, dense_k, dense_v, cu, prefix, cos, sin)
    ref = attention_ref(q, k_cache, v_cache, cu, prefix, tables, None, cos, sin)
    err = (out.double() - exact).abs().max().item()  # NaN (an unwritten element or a poisoned key) fails below
    ref_err = (ref.double() - exact).abs().max().item()
    assert err <= 2 * ref_err + 1e-5, f"kernel error {err:.3g} vs PyTorch's {ref_err:.3g}"


CPU_CASES = [  # lens, prefix_lens, Hq, Hkv, D, rope, page
    ([1, 17, 113], [0, 0, 0], 2, 1, 64, False, 16),
    ([1, 17, 113], [9, 0, 40], 4, 2, 80, True, 64),
    ([33], [70], 3, 1, 128, True, 40),
    ([5, 70], [64, 1], 3, 1, 64, False, 128),
    ([7, 20], [0, 3], 2, 2, 8, True, 1),  # Hq = Hkv, D padded to the 16 that tl.dot needs; one key per page
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: f"lens{c[0]}-pre{c[1]}-{c[2]}x{c[3]}-d{c[4]}-p{c[6]}")
def test_matches_reference(case, dtype):
    *shape, page = case
    check(*shape, dtype, page=page)


def test_inf_past_the_keys_never_leaks():
    check([3, 50], [13, 0], 2, 1, 64, True, torch.float32, page=32, poison=float("inf"))


def test_default_max_seqlen_is_safe():
    """max_seqlen=None sizes the grid by T; surplus query blocks must exit without writing."""
    check([2, 90], [3, 0], 2, 1, 64, True, torch.float16, max_seqlen=None)


def test_every_tuning_config(monkeypatch):
    """The interpreter runs only the first config; check that each tile shape the GPU may pick is correct too."""
    from hovle.kernels import attention as mod

    for config in mod._tile_configs():
        monkeypatch.setattr(mod._attention_kernel, "configs", [config])  # a single config runs without tuning
        for page in (16, 128):  # tiles straddling pages, and tiles inside one page
            check([3, 130], [0, 70], 2, 1, 64, True, torch.float16, page=page)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "lens, prefixes",
    [([1023], [0]), ([4096], [0]), ([13000], [0]), ([1, 17, 113, 1023], [0, 300, 5, 2048]), ([64], [3000])],
)
@pytest.mark.parametrize("page", [64, 256])
def test_model_shape_cuda(lens, prefixes, dtype, page):
    check(lens, prefixes, 16, 8, 128, True, dtype, page=page)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("hq, hkv, d", [(2, 1, 64), (4, 2, 80), (3, 1, 128), (16, 8, 128), (8, 8, 96)])
def test_head_shapes_cuda(hq, hkv, d, dtype):
    check([1, 17, 113, 513], [0, 5, 64, 0], hq, hkv, d, True, dtype)


def test_custom_op_registration():
    """Schema, fake (meta) kernel and dispatch are consistent, so torch.compile and CUDA graphs can trace it."""
    args, _ = attention_inputs([3, 9], [0, 4], 2, 1, 64, torch.float16, True)
    args = (*args[:6], None, *args[6:], 9)
    torch.library.opcheck(torch.ops.hovle.attention.default, args, test_utils=("test_schema", "test_faketensor"))
    traced = torch.compile(lambda *a: attention(*a), backend="aot_eager", fullgraph=True)  # no graph break
    assert torch.equal(traced(*args), attention(*args))


def _bad(name: str, **changes):
    return pytest.param(name, changes, id=name + "-" + "-".join(changes))


@pytest.mark.parametrize(
    "name, changes",
    [
        _bad("q", q=lambda a: a["q"][:, 0]),
        _bad("q", q=lambda a: a["q"].to(torch.float64)),
        _bad("k_cache", k_cache=lambda a: a["k_cache"].to(torch.float32)),
        _bad("k_cache", k_cache=lambda a: a["k_cache"][..., :32]),
        _bad("v_cache", v_cache=lambda a: a["v_cache"][:, :, :5]),
        _bad(
            "Hq=2", k_cache=lambda a: a["k_cache"].repeat(1, 3, 1, 1), v_cache=lambda a: a["v_cache"].repeat(1, 3, 1, 1)
        ),
        _bad("cu_seqlens", cu_seqlens=lambda a: a["cu_seqlens"][:-1]),
        _bad("cu_seqlens", cu_seqlens=lambda a: a["cu_seqlens"].float()),
        _bad("prefix_lens", prefix_lens=lambda a: a["prefix_lens"][None]),
        _bad("block_tables", block_tables=lambda a: a["block_tables"][0]),
        _bad("block_tables", block_tables=lambda a: a["block_tables"].float()),
        _bad("cos and sin", sin=lambda a: None),
        _bad("cos", cos=lambda a: a["cos"][:-1], sin=lambda a: a["sin"][:-1]),
        _bad("max_seqlen", max_seqlen=lambda a: 0),
    ],
)
def test_validation(name, changes):
    keys = ("q", "k_cache", "v_cache", "cu_seqlens", "prefix_lens", "block_tables", "cos", "sin")
    args = dict(zip(keys, attention_inputs([3, 9], [0, 4], 2, 1, 64, torch.float16, True)[0]), max_seqlen=9)
    args.update({key: fn(args) for key, fn in changes.items()})
    with pytest.raises(ValueError, match=name):
        attention(**args)
