"""Triton encoder attention (bidirectional, key mask, additive bias, Lq != Lk, grouped heads) vs encoder_attention_ref
and an fp64 reference: the kernel's error <= 2x PyTorch's own + 1e-5.

q, k and v are strided views of fused projections; biases come full, strided, or broadcast (stride 0) over the
batch, the heads or the queries; key masks pad some rows and mask every key of one batch element (its rows must be
zeros). Interpreter cases (CPU) stay tiny; bf16 and the CLIP / DeBERTa / fusion-layer shapes run on CUDA.
"""

import pytest
import torch

from hovle.kernels._triton import HAS_TRITON
from hovle.kernels.encoder_attention import encoder_attention, encoder_attention_ref
from tests.kernels.support import bits, check_graph_replay
from tests.support import kernel_device, requires_cuda

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_TRITON, reason="needs triton"),
    # A NaN or inf made anywhere in the interpreted kernel (even in lanes never stored: rows past Lq, keys past Lk,
    # reads outside a tensor) raises: the online softmax handles -inf without ever forming -inf - -inf or 0 * inf.
    pytest.mark.filterwarnings("error::RuntimeWarning"),
]

DEV = kernel_device()


def fp64_attention(q, k, v, key_mask=None, bias=None, scale=None):
    rep = q.shape[2] // k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qd = q.double().permute(0, 2, 1, 3)  # (B, Lq, Hq, D) -> (B, Hq, Lq, D)
    kd = k.double().permute(0, 2, 1, 3).repeat_interleave(rep, 1)  # (B, Lk, Hkv, D) -> (B, Hq, Lk, D)
    vd = v.double().permute(0, 2, 1, 3).repeat_interleave(rep, 1)  # (B, Lk, Hkv, D) -> (B, Hq, Lk, D)
    s = qd @ kd.transpose(-1, -2) * scale + (bias.double() if bias is not None else 0.0)  # (B, Hq, Lq, Lk)
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    o = s.softmax(-1).nan_to_num(0.0) @ vd  # (B, Hq, Lq, D)
    return o.permute(0, 2, 1, 3)  # (B, Hq, Lq, D) -> (B, Lq, Hq, D)


def make_inputs(b, lq, lk, hq, hkv, d, mask, bias, dtype, device=DEV, seed=0):
    """q a column slice of a wider projection, k and v the halves of a fused kv projection; key_mask per `mask`
    (None, "pad": random lengths >= 1, "pad+empty": and batch 0 with no key); bias per `bias` (None, "full": a
    strided (B, Hq, Lq, Lk) slice, "batch": (1, Hq, Lq, Lk), "pair": (Lq, Lk), "keys": (B, 1, 1, Lk))."""
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(b, lq, hq * d + 8, generator=gen)
    q = wide[..., : hq * d].view(b, lq, hq, d)  # (B, Lq, Hq D) -> (B, Lq, Hq, D), row stride Hq D + 8
    kv = torch.randn(b, lk, 2, hkv, d, generator=gen)
    k, v = kv[:, :, 0], kv[:, :, 1]  # (B, Lk, Hkv, D) views, row stride 2 Hkv D
    key_mask = None
    if mask is not None:
        lengths = torch.randint(1, lk + 1, (b,), generator=gen)
        key_mask = torch.arange(lk)[None, :] < lengths[:, None]  # (B, Lk)
        key_mask[:, 0] &= torch.rand(b, generator=gen) > 0.5  # a hole before the padding too
        if mask == "pad+empty":
            key_mask[0] = False
    shapes = {"full": (b, hq, lq, lk), "batch": (1, hq, lq, lk), "pair": (lq, lk), "keys": (b, 1, 1, lk)}
    full_bias = torch.randn(*shapes[bias], generator=gen) * 2 if bias is not None else None
    if bias == "full":  # strided (row stride Lk + 3) inside NaN margins: a read past Lq or Lk shows
        full_bias = torch.nn.functional.pad(full_bias, (2, 1, 0, 1), value=float("nan"))
        full_bias = full_bias[:, :, :lq, 2 : lk + 2]
    to = lambda t: t.to(device) if t is None or t.dtype == torch.bool else t.to(device, dtype)  # noqa: E731
    return tuple(to(t) if t is not None else None for t in (q, k, v, key_mask, full_bias))


def check(q, k, v, key_mask=None, bias=None, scale=None, run=encoder_attention):
    out = run(q, k, v, key_mask, bias, scale)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    exact = fp64_attention(q, k, v, key_mask, bias, scale)
    ref = encoder_attention_ref(q, k, v, key_mask, bias, scale)
    err = (out.double() - exact).abs().max().item()  # NaN (an unwritten element) fails below
    ref_err = (ref.double() - exact).abs().max().item()
    assert err <= 2 * ref_err + 1e-5, f"kernel error {err:.3g} vs PyTorch's {ref_err:.3g}"
    if key_mask is not None:
        empty = ~key_mask.any(1)
        assert torch.equal(out[empty], torch.zeros_like(out[empty]))  # no key: zeros, not NaN
    return out


CPU_CASES = [  # B, Lq, Lk, Hq, Hkv, D, key mask, bias
    (1, 1, 1, 2, 2, 32, None, None),  # tiny
    (2, 113, 113, 2, 2, 64, None, None),  # a CLIP-like self-attention, partial tiles
    (2, 37, 70, 4, 2, 80, "pad+empty", "batch"),  # Lq != Lk, grouped heads, D padded, a batch with no key
    (2, 20, 20, 4, 1, 96, "pad", "full"),  # DeBERTa-like: strided full bias and padding
    (1, 130, 5, 2, 2, 128, "pad", "pair"),  # fusion cross-attention, Lq >> Lk
    (3, 9, 66, 2, 1, 32, None, "keys"),  # a bias broadcast over heads and queries
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "B{}-q{}-k{}-h{}x{}-d{}-{}-{}".format(*c))
def test_matches_reference(case, dtype):
    check(*make_inputs(*case, dtype))


def test_scale_and_contiguous_inputs():
    q, k, v, key_mask, bias = make_inputs(2, 17, 23, 2, 1, 64, "pad", "batch", torch.float32)
    check(q.contiguous(), k.contiguous(), v.contiguous(), key_mask, bias, scale=0.3)


def test_every_tuning_config(monkeypatch):
    """The interpreter runs only the first config; check that each tile shape the GPU may pick is correct too."""
    from hovle.kernels import encoder_attention as mod

    args = make_inputs(1, 70, 131, 2, 1, 64, "pad+empty", "full", torch.float16)
    for config in mod._tile_configs():
        monkeypatch.setattr(mod._encoder_attention_kernel, "configs", [config])  # a single config runs untuned
        check(*args)


def test_empty_inputs():
    q, k, v, key_mask, _ = make_inputs(2, 3, 4, 2, 2, 32, "pad", None, torch.float32)
    assert encoder_attention(q[:, :0], k, v, key_mask).shape == (2, 0, 2, 32)
    out = encoder_attention(q, k[:, :0], v[:, :0], key_mask[:, :0])  # no keys at all: every row fully masked
    assert torch.equal(out, torch.zeros_like(out))


def test_custom_op_registration():
    """Schema, fake (meta) kernel and dispatch are consistent, so torch.compile and CUDA graphs can trace it."""
    args = (*make_inputs(2, 9, 12, 4, 2, 32, "pad", "batch", torch.float16), 0.25)
    torch.library.opcheck(
        torch.ops.hovle.encoder_attention.default, args, test_utils=("test_schema", "test_faketensor")
    )
    traced = torch.compile(encoder_attention, backend="aot_eager", fullgraph=True)  # no graph break
    assert torch.equal(bits(traced(*args)), bits(encoder_attention(*args)))


def _bad(name: str, **changes):
    return pytest.param(name, changes, id=name + "-" + "-".join(changes))


@pytest.mark.parametrize(
    "name, changes",
    [
        _bad("q must be a 4-D", q=lambda a: a["q"][:, 0]),
        _bad("q must be", q=lambda a: a["q"].double()),
        _bad("k must be", k=lambda a: a["k"].transpose(2, 3)),  # (B, Lk, D, Hkv): D strided
        _bad("k and v must be q's dtype", v=lambda a: a["v"].half()),
        _bad("k and v must both be", v=lambda a: a["v"][:, :-1]),
        _bad("k and v must both be", k=lambda a: a["k"][..., :16], v=lambda a: a["v"][..., :16]),
        _bad(
            "Hq=4 must be a multiple of k's Hkv=3",
            k=lambda a: a["k"][:, :, [0, 1, 1]],
            v=lambda a: a["v"][:, :, [0, 1, 1]],
        ),
        _bad("key_mask must be a bool", key_mask=lambda a: a["key_mask"].int()),
        _bad("key_mask must be a bool", key_mask=lambda a: a["key_mask"][:, :-1]),
        _bad("bias must be a float tensor broadcastable", bias=lambda a: a["bias"][..., :-1]),
        _bad("bias must be a float tensor broadcastable", bias=lambda a: a["bias"][None]),
        _bad("bias is on meta", bias=lambda a: a["bias"].to("meta")),
    ],
)
def test_validation(name, changes):
    keys = ("q", "k", "v", "key_mask", "bias")
    args = dict(zip(keys, make_inputs(2, 5, 6, 4, 2, 32, "pad", "batch", torch.float32)))
    args.update({key: fn(args) for key, fn in changes.items()})
    with pytest.raises(ValueError, match=name):
        encoder_attention(**args)


def test_the_triton_table_runs_the_kernel(monkeypatch):
    """get_ops("triton") holds encoder_attention_auto, and where nothing is measured (the CPU) that runs our kernel:
    counted, so a slow path taken instead fails here. On CUDA, forcing "triton" must run it too."""
    from hovle.kernels import TORCH_OPS, encoder_attention_select, get_ops
    from hovle.kernels.encoder_attention import encoder_attention_torch
    from hovle.kernels.encoder_attention_select import encoder_attention_auto

    ops = get_ops("triton", DEV)
    assert ops.encoder_attention is encoder_attention_auto and TORCH_OPS.encoder_attention is encoder_attention_torch
    if DEV == "cuda":
        monkeypatch.setenv("HOVLE_CHOOSE_ENCODER_ATTENTION", "triton")
    args = make_inputs(2, 33, 17, 4, 2, 64, "pad+empty", "batch", torch.float32)
    check(*args, run=ops.encoder_attention)
    before = encoder_attention_select._CHOICE.calls["triton"]
    check(*args, run=ops.encoder_attention)
    assert encoder_attention_select._CHOICE.calls["triton"] == before + 1


@pytest.mark.parametrize("candidate", ["triton", "sdpa", "sdpa-cudnn", "sdpa-flash", "sdpa-efficient"])
@pytest.mark.parametrize("masked", [False, True])
def test_auto_candidates_agree_with_the_reference(candidate, masked, monkeypatch):
    """Each candidate forced, against fp64: on the CPU in fp32 (ours and SDPA's own choice); on CUDA in bf16 at
    CLIP's head shape, every backend that accepts the inputs (FlashAttention takes no mask or bias)."""
    from hovle.kernels import encoder_attention_select
    from hovle.kernels.encoder_attention_select import encoder_attention_auto

    if DEV == "cpu" and candidate not in ("triton", "sdpa"):
        pytest.skip(f"{candidate} is a CUDA backend")
    monkeypatch.setenv("HOVLE_CHOOSE_ENCODER_ATTENTION", candidate)
    dtype, (b, lq, lk) = (torch.bfloat16, (4, 577, 577)) if DEV == "cuda" else (torch.float32, (2, 19, 40))
    args = make_inputs(b, lq, lk, 4, 2, 64, "pad" if masked else None, "batch" if masked else None, dtype)
    try:
        encoder_attention_auto(*args)
    except RuntimeError as exc:  # a backend refusing these inputs: autoselect leaves it out the same way
        if candidate in ("triton", "sdpa"):
            raise
        pytest.skip(f"{candidate} refuses these inputs: {str(exc).splitlines()[0][:120]}")
    calls = encoder_attention_select._CHOICE.calls[candidate]
    check(*args, run=encoder_attention_auto)
    assert encoder_attention_select._CHOICE.calls[candidate] == calls + 1


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "case",
    [
        (16, 577, 577, 16, 16, 64, None, None),  # CLIP ViT-L/14 at 336 px, 16 crops
        (4, 200, 200, 12, 12, 64, "pad", "full"),  # DeBERTa-base: relative-position bias and padding
        (2, 1297, 20, 12, 12, 64, "pad+empty", None),  # VLE fusion: image queries over text keys
        (2, 20, 1297, 12, 12, 64, "pad", None),  # and text queries over image keys
    ],
    ids=lambda c: "B{}-q{}-k{}-h{}x{}-d{}-{}-{}".format(*c) if isinstance(c, tuple) else str(c),
)
def test_model_shapes_cuda(case, dtype):
    check(*make_inputs(*case, dtype, device="cuda"))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("d", [32, 64, 80, 96, 128])
def test_head_dims_cuda(d, dtype):
    check(*make_inputs(3, 300, 257, 4, 2, d, "pad+empty", "batch", dtype, device="cuda"))


@requires_cuda
def test_cuda_graph():
    q, k, v, key_mask, bias = make_inputs(2, 577, 577, 16, 16, 64, "pad", None, torch.bfloat16, device="cuda")
    op = lambda *a: (encoder_attention(*a),)  # noqa: E731
    check_graph_replay(op, (q, k, v, key_mask, bias), q, op)
