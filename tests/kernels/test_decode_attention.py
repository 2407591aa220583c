"""Triton flash-decoding vs decode_attention_ref and an fp64 reference (kernel error <= 2x PyTorch's own + 1e-5).

Interpreter cases (CPU) keep contexts under 300 keys; bf16, the model shape (16 q / 8 kv heads, D=128) and 4k/16k
contexts run on CUDA only. torch.empty is poisoned (NaN) in every kernel call so unwritten elements show; the keys
sit in shuffled pages whose unowned positions hold NaN (inf in one case) and whose table rows end in garbage ids.
"""

import pytest
import torch

from hovle.kernels._triton import HAS_TRITON
from hovle.kernels.decode_attention import _launch, decode_attention, decode_attention_ref
from tests.kernels.support import decode_attention_fp64, decode_inputs
from tests.support import requires_cuda

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_TRITON, reason="needs triton")]


def check(out, inputs, dense):
    """out vs the same-dtype reference and fp64: the 2x rule, and every element written (no NaN)."""
    q, k_cache, v_cache, seq_lens, tables, cos, sin = inputs
    assert out.shape == q.shape and out.dtype == q.dtype and not out.isnan().any()
    with torch.inference_mode():
        torch.use_deterministic_algorithms(False)  # the references may use any algorithm
        gold = decode_attention_fp64(q, *dense, cos, sin)
        ref = decode_attention_ref(q, k_cache, v_cache, seq_lens, tables, None, cos, sin)
    ref_err = (ref.double() - gold).abs().max().item()
    err = (out.double() - gold).abs().max().item()
    assert err <= 2 * ref_err + 1e-5, f"kernel error {err:.3g} vs PyTorch's {ref_err:.3g}"
    assert (out.double() - ref.double()).abs().max().item() <= 3 * ref_err + 1e-5


# (lens, Hq, Hkv, D, page): unequal lengths with 1 and non-multiples of BLOCK_N; pages inside and across key tiles.
CPU_CASES = [
    ([1, 37, 130], 2, 1, 64, 16),
    ([65, 5], 3, 1, 80, 64),
    ([200, 1, 64], 8, 2, 128, 24),
    ([129], 2, 2, 64, 128),
]


@pytest.mark.parametrize("rope", [False, True], ids=["plain", "rope"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: f"rep{c[1] // c[2]}-d{c[3]}-lens{c[0]}-p{c[4]}")
def test_matches_references(case, dtype, rope):
    lens, hq, hkv, d, page = case
    inputs, dense = decode_inputs(lens, hq, hkv, d, dtype, rope, page=page)
    check(decode_attention(*inputs[:5], None, *inputs[5:]), inputs, dense)


def test_inf_past_the_keys_never_leaks():
    inputs, dense = decode_inputs([3, 70], 4, 2, 64, torch.float32, True, page=32, poison=float("inf"))
    check(decode_attention(*inputs[:5], None, *inputs[5:]), inputs, dense)


@pytest.mark.parametrize("num_splits", [1, 2, 7])
def test_split_counts_and_empty_chunks(num_splits):
    """Explicit split counts: 7 splits of a 100-key sequence leave whole chunks past its end (and of length 1's)."""
    inputs, dense = decode_inputs([100, 1, 290], 4, 1, 64, torch.float16, rope=True, seed=1)
    q, k_cache, v_cache, seq_lens, tables, cos, sin = inputs
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    _launch(q, k_cache, v_cache, seq_lens, tables, None, cos, sin, num_splits, out)
    check(out, inputs, dense)


def test_max_seq_len_hint_and_scale():
    """max_seq_len only sizes the split count: a hint below the true lengths still gives exact results."""
    inputs, dense = decode_inputs([150, 20], 4, 2, 64, torch.float32, rope=False, seed=2)
    q, k_cache, v_cache, seq_lens, tables, _, _ = inputs
    for hint in (1, 150, 10_000):
        check(decode_attention(q, k_cache, v_cache, seq_lens, tables, max_seq_len=hint), inputs, dense)
    out = decode_attention(q, k_cache, v_cache, seq_lens, tables, scale=0.3)
    torch.use_deterministic_algorithms(False)
    ref = decode_attention_ref(q, k_cache, v_cache, seq_lens, tables, scale=0.3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_torch_compile_sees_the_custom_op():
    inputs, _ = decode_inputs([33, 7], 2, 1, 64, torch.float32, rope=True, seed=3)
    torch.library.opcheck(
        torch.ops.hovle.decode_attention.default, (*inputs[:5], None, *inputs[5:], None), test_utils=["test_faketensor"]
    )


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("rope", [False, True], ids=["plain", "rope"])
@pytest.mark.parametrize(
    "lens", [[4096, 1, 1000, 4097], [16384, 300], [1023, 113, 1, 4000, 64, 128, 2048, 999]], ids=lambda x: str(len(x))
)
@pytest.mark.parametrize("page", [64, 256])
def test_model_shape_long_contexts_cuda(lens, rope, dtype, page):
    inputs, dense = decode_inputs(lens, 16, 8, 128, dtype, rope, device="cuda", page=page)
    check(decode_attention(*inputs[:5], None, *inputs[5:]), inputs, dense)


@requires_cuda
@pytest.mark.parametrize("case", [([257, 1, 90], 4, 1, 64), ([300, 31], 6, 2, 80), ([511], 8, 2, 128)])
def test_group_sizes_bf16_cuda(case):
    lens, hq, hkv, d = case
    inputs, dense = decode_inputs(lens, hq, hkv, d, torch.bfloat16, True, device="cuda", page=32)
    check(decode_attention(*inputs[:5], None, *inputs[5:]), inputs, dense)


@requires_cuda
def test_cuda_graph_capture():
    inputs, (dense_k, dense_v) = decode_inputs([4096, 17], 16, 8, 128, torch.bfloat16, True, device="cuda", page=64)
    torch.use_deterministic_algorithms(False)  # the captured allocations need not be filled
    decode_attention(*inputs[:5], None, *inputs[5:], max_seq_len=4096)  # compile and autotune outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(*inputs[:5], None, *inputs[5:], max_seq_len=4096)
    inputs[3].copy_(torch.tensor([100, 17], device="cuda"))  # new lengths, same graph
    graph.replay()
    check(out.clone(), inputs, ([dense_k[0][:, :100], dense_k[1]], [dense_v[0][:, :100], dense_v[1]]))


def _bad(name):
    """A valid CPU-sized call with one argument broken; returns (args, kwargs)."""
    q, k_cache, v_cache, seq_lens, tables, cos, sin = decode_inputs([5, 3], 4, 2, 64, torch.float32, True)[0]
    args = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "seq_lens": seq_lens, "block_tables": tables}
    kwargs = {"cos": cos, "sin": sin}
    broken = {
        "q": ("q", q[..., :32]),  # D differs from the cache
        "q_dtype": ("q", q.to(torch.int32)),
        "q_stride": ("q", q.transpose(1, 2).contiguous().transpose(1, 2)),
        "k_cache": ("k_cache", k_cache[0]),
        "v_cache": ("v_cache", v_cache[:, :1]),
        "k_dtype": ("k_cache", k_cache.half()),
        "heads": ("q", q[:, :3]),
        "seq_lens": ("seq_lens", seq_lens.float()),
        "tables": ("block_tables", tables[:1]),
        "cos": ("cos", cos[:, :10]),
        "sin": ("sin", None),
    }
    key, value = broken[name]
    (args if key in args else kwargs)[key] = value
    return args, kwargs


@pytest.mark.parametrize(
    "name, exc, words",
    [
        ("q", ValueError, "k_cache"),
        ("q_dtype", TypeError, "q must be"),
        ("q_stride", ValueError, "q must be .* with a contiguous last dim"),
        ("k_cache", ValueError, "k_cache must be"),
        ("v_cache", ValueError, "v_cache shape"),
        ("k_dtype", ValueError, "k_cache must be"),
        ("heads", ValueError, "q heads (3)"),
        ("seq_lens", ValueError, "seq_lens must be"),
        ("tables", ValueError, "block_tables must be"),
        ("cos", ValueError, "cos, sin must be"),
        ("sin", ValueError, "cos and sin"),
    ],
)
def test_validation(name, exc, words):
    args, kwargs = _bad(name)
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)")):
        decode_attention(**args, **kwargs)


def test_validation_scalars():
    q, k_cache, v_cache, seq_lens, tables, _, _ = decode_inputs([5], 2, 1, 64, torch.float32, False)[0]
    with pytest.raises(ValueError, match="max_seq_len"):
        decode_attention(q, k_cache, v_cache, seq_lens, tables, max_seq_len=0)
    with pytest.raises(TypeError, match="scale"):
        decode_attention(q, k_cache, v_cache, seq_lens, tables, scale="0.1")
    with pytest.raises(ValueError, match="seq_lens is on"):
        decode_attention(q, k_cache, v_cache, seq_lens.to("meta"), tables)


def test_every_tuning_config(monkeypatch):
    """The interpreter (and HOVLE_TRITON_AUTOTUNE=0) runs only the first config; each one the GPU may pick is
    checked here, with pages inside a key tile and straddling it."""
    from hovle.kernels import decode_attention as mod

    for config in mod._CONFIGS:
        monkeypatch.setattr(mod._decode_attention_kernel, "configs", [config])  # a single config runs without tuning
        for page in (16, 128):
            inputs, dense = decode_inputs([200, 1, 37], 4, 2, 64, torch.float16, True, page=page, seed=5)
            check(decode_attention(*inputs[:5], None, *inputs[5:]), inputs, dense)
