"""Triton patch_embed (implicit-im2col GEMM + bias + pos, optional fused pixel shuffle) vs patch_embed_ref and fp64.

On the CPU interpreter: p = 14 with 56 x 56 tiles (4 x 4 patches), C = 32/48, fp32 and fp16 weights (the
interpreter's bf16 tl.dot is broken); the model shape (448 px, C = 2048, bf16) runs on CUDA only.
"""

import pytest
import torch
import torch.nn.functional as F

from hovle.kernels.patch_embed import patch_embed, patch_embed_ref, weight_layout
from hovle.kernels.pixel_shuffle import pixel_shuffle_ref
from tests.kernels.support import bits
from tests.support import kernel_device, requires_cuda

pytestmark = pytest.mark.gpu  # make gpu-check runs these

DEV = kernel_device()
P = 14


def inputs(n, side, c, wdtype, pdtype=torch.float32, seed=0, device=DEV):
    """Normalised-image-like pixels and conv-init-scaled weights; bias and pos of order 0.1-1."""
    gen = torch.Generator().manual_seed(seed)
    g = side // P
    pixels = torch.randn(n, 3, side, side, generator=gen).to(device, pdtype)
    weight = (torch.randn(c, 3, P, P, generator=gen) / (3 * P * P) ** 0.5).to(device, wdtype)
    bias = (0.1 * torch.randn(c, generator=gen)).to(device, wdtype)
    pos = torch.randn(g * g, c, generator=gen).to(device, wdtype)
    return pixels, weight, bias, pos


def fp64_patch_embed(pixels, weight, bias, pos):
    """The exact result for the inputs the reference sees (pixels rounded to the weight dtype first)."""
    x = pixels.to(weight.dtype).double()
    out = F.conv2d(x, weight.double(), bias.double(), stride=weight.shape[-1])  # (N, C, g, g)
    return out.flatten(2).transpose(1, 2) + pos.double()  # (N, C, P) -> (N, P, C)


def check_close(out, pixels, weight, bias, pos):
    ref = patch_embed_ref(pixels, weight, bias, pos)
    assert out.shape == ref.shape and out.dtype == weight.dtype
    exact = fp64_patch_embed(pixels, weight, bias, pos)
    err = (out.double() - exact).abs().max().item()
    ref_err = (ref.double() - exact).abs().max().item()
    assert err <= 2 * ref_err + 1e-5, f"kernel error {err} vs reference error {ref_err}"


CPU_CASES = [
    (torch.float32, torch.float32, 48),
    (torch.float16, torch.float32, 32),  # fp16 weights, fp32 pixels: pixels rounded to fp16 on load
    (torch.float16, torch.float16, 48),
]


@pytest.mark.parametrize("wdtype, pdtype, c", CPU_CASES, ids=str)
@pytest.mark.parametrize("n", [1, 3])
def test_patch_embed_matches_reference_and_shuffle_is_exact(wdtype, pdtype, c, n):
    pixels, weight, bias, pos = inputs(n, 4 * P, c, wdtype, pdtype, seed=n * 100 + c)
    out = patch_embed(pixels, weight, bias, pos)
    check_close(out, pixels, weight, bias, pos)
    shuffled = patch_embed(pixels, weight, bias, pos, shuffle=True)
    assert shuffled.shape == (n, 4, 4 * c)
    assert torch.equal(bits(shuffled), bits(pixel_shuffle_ref(out, 4)))
    ref = patch_embed_ref(pixels, weight, bias, pos, shuffle=True)
    assert torch.equal(bits(ref), bits(pixel_shuffle_ref(patch_embed_ref(pixels, weight, bias, pos), 4)))


def test_patch_embed_several_row_and_column_blocks():
    """M = 9 * 16 patches and C = 136 span several 128-wide program blocks with partial edges on both axes."""
    pixels, weight, bias, pos = inputs(9, 4 * P, 136, torch.float16, seed=11)
    out = patch_embed(pixels, weight, bias, pos)
    check_close(out, pixels, weight, bias, pos)
    assert torch.equal(bits(patch_embed(pixels, weight, bias, pos, shuffle=True)), bits(pixel_shuffle_ref(out, 4)))


def test_patch_embed_strided_inputs_give_identical_bits():
    """A channel-sliced pixels view, a transposed pos and other weight layouts read through their strides."""
    pixels, weight, bias, pos = inputs(2, 4 * P, 32, torch.float16, seed=7)
    wide = torch.randn(2, 5, 4 * P, 4 * P, generator=torch.Generator().manual_seed(8)).to(DEV)
    wide[:, 1:4] = pixels
    pixels_view = wide[:, 1:4]  # (N, 3, S, S) with channel stride S*S inside a 5-channel buffer
    pos_view = pos.t().contiguous().t()  # (P, C) stored column-major
    weight_view = weight.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last storage
    assert not pixels_view.is_contiguous() and not pos_view.is_contiguous() and not weight_view.is_contiguous()
    out = patch_embed(pixels_view, weight_view, bias, pos_view, shuffle=True)
    assert torch.equal(bits(out), bits(patch_embed(pixels, weight, bias, pos, shuffle=True)))
    check_close(patch_embed(pixels_view, weight_view, bias, pos_view), pixels_view, weight_view, bias, pos_view)
    fast = weight_layout(weight)  # C innermost: read as is, no per-call copy
    assert fast.stride(0) == 1 and torch.equal(fast, weight)
    assert torch.equal(bits(patch_embed(pixels, fast, bias, pos, shuffle=True)), bits(out))


def test_patch_embed_odd_grid_without_shuffle():
    """g = 3 (42 px tiles): fine unshuffled; a 2x2 shuffle needs an even grid."""
    pixels, weight, bias, pos = inputs(2, 3 * P, 32, torch.float32, seed=9)
    check_close(patch_embed(pixels, weight, bias, pos), pixels, weight, bias, pos)
    with pytest.raises(ValueError, match="even patch grid"):
        patch_embed(pixels, weight, bias, pos, shuffle=True)


def test_patch_embed_fake_tensor_registration():
    args = inputs(1, 4 * P, 32, torch.float32, seed=10)
    for shuffle in (False, True):
        result = torch.library.opcheck(
            torch.ops.hovle.patch_embed.default, (*args, shuffle), test_utils=("test_faketensor",)
        )
        assert result["test_faketensor"] == "SUCCESS"


@requires_cuda
@pytest.mark.parametrize("n", [1, 3, 13])
def test_patch_embed_model_shape_cuda(n):
    pixels, weight, bias, pos = inputs(n, 448, 2048, torch.bfloat16, seed=n, device="cuda")
    out = patch_embed(pixels, weight, bias, pos)
    check_close(out, pixels, weight, bias, pos)
    shuffled = patch_embed(pixels, weight, bias, pos, shuffle=True)
    assert torch.equal(bits(shuffled), bits(pixel_shuffle_ref(out, 32)))


def bad(name):
    """Valid fp32 inputs with one argument replaced by `name`'s bad value."""
    pixels, weight, bias, pos = inputs(1, 4 * P, 32, torch.float32)
    args = {"pixels": pixels, "weight": weight, "bias": bias, "pos": pos}
    args.update(
        {
            "pixels-3d": {"pixels": pixels[0]},
            "pixels-channels": {"pixels": pixels[:, :2]},
            "pixels-side": {"pixels": pixels[:, :, :50, :50]},
            "weight-shape": {"weight": weight[:, :, :, :7]},
            "bias-shape": {"bias": bias[:16]},
            "pos-shape": {"pos": pos[:9]},
            "int-pixels": {"pixels": pixels.to(torch.int32)},
        }[name]
    )
    return args


@pytest.mark.parametrize(
    "name, exc, match",
    [
        ("pixels-3d", ValueError, "pixels must be"),
        ("pixels-channels", ValueError, "pixels must be"),
        ("pixels-side", ValueError, "pixels side S = 50"),
        ("weight-shape", ValueError, "weight must be"),
        ("bias-shape", ValueError, "bias must be"),
        ("pos-shape", ValueError, "pos must be"),
        ("int-pixels", TypeError, "pixels must be float32"),
    ],
)
def test_patch_embed_rejects_bad_inputs(name, exc, match):
    with pytest.raises(exc, match=match):
        patch_embed(**bad(name))
