"""The engine's CLIP vision tower against transformers' CLIPVisionModel with the same random weights (fp32)."""

import pytest
import torch

from hovle.kernels import TORCH_OPS
from hovle.layers.clip import ClipVision, ClipVisionConfig, clip_shapes

transformers = pytest.importorskip("transformers")


def _state(hf, prefix: str, keep=lambda k: True) -> dict:
    """The model's tensors under `prefix` (transformers 5 names them without "vision_model.", 4 with it)."""
    items = hf.state_dict().items()
    return {
        prefix + k.removeprefix("vision_model."): v.clone() for k, v in items if "position_ids" not in k and keep(k)
    }


def _pair(act: str, image: int, patch: int, layers: int = 2):
    hf_cfg = transformers.CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=image,
        patch_size=patch,
        hidden_act=act,
        layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(hf_cfg).eval()
    with torch.no_grad():  # a fresh model's LayerNorms are identities and its biases zero: make every tensor count
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cfg = ClipVisionConfig(64, 96, layers, 4, patch, image, 1e-5, act)
    return hf, cfg


@pytest.mark.parametrize("act, image, patch", [("quick_gelu", 28, 14), ("gelu", 32, 16), ("quick_gelu", 42, 14)])
def test_clip_vision_equals_transformers(act, image, patch):
    hf, cfg = _pair(act, image, patch)
    state = _state(hf, "vision_model.")
    assert {k: tuple(v.shape) for k, v in state.items()} == clip_shapes("vision_model.", cfg)
    ours = ClipVision(cfg, state, "vision_model.", TORCH_OPS)
    assert not state  # every tensor was taken
    pixels = torch.randn(3, 3, image, image, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf(pixel_values=pixels, output_hidden_states=True)
        got = ours.forward(pixels)
    want = out.hidden_states[-1]
    assert got.shape == want.shape == (3, cfg.grid**2 + 1, 64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.post_norm(got)[:, 0], out.pooler_output, rtol=1e-4, atol=1e-5)


def test_without_post_layernorm_in_the_file():
    hf, cfg = _pair("quick_gelu", 28, 14, layers=1)
    state = _state(hf, "p.", keep=lambda k: "post_layernorm" not in k)
    assert {k: tuple(v.shape) for k, v in state.items()} == clip_shapes("p.", cfg, post_layernorm=False)
    ours = ClipVision(cfg, state, "p.", TORCH_OPS)
    with pytest.raises(ValueError, match="no post_layernorm"):
        ours.post_norm(torch.zeros(1, 64))
