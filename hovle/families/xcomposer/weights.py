"""InternLM-XComposer2-4KHD's tensor names and shapes as released (pickle shards on the main branch, safetensors in
the converted revision): InternLM2-7B with PLoRA pairs on every projection, the CLIP ViT-L tower under `vit.`, the
projector and the two learned separator vectors."""

from __future__ import annotations

from ...layers.clip import clip_shapes
from ...layers.decoder import layer_shapes
from ...loaders import weights as checkpoint
from .config import VIT, XComposerConfig

# Present in the release and validated, but never read: the tower's output is taken before post_layernorm.
UNUSED_TENSORS = frozenset({VIT + "post_layernorm.weight", VIT + "post_layernorm.bias"})


def ignored(name: str) -> bool:
    """Buffers the release may also hold (rotary tables, CLIP's position ids): never part of the model's state."""
    return name.endswith(("rotary_emb.inv_freq", "position_ids"))


def expected_tensors(cfg: XComposerConfig) -> dict[str, tuple[int, ...]]:
    c, v, merged = cfg.llm.hidden_size, cfg.vocab_size, cfg.merged_width
    return {
        "model.tok_embeddings.weight": (v, c),
        **layer_shapes("model.layers", cfg.llm, cfg.lora_ranks),
        "model.norm.weight": (c,),
        "output.weight": (v, c),
        **clip_shapes(VIT, cfg.vision),
        "vision_proj.0.weight": (c, merged),
        "vision_proj.0.bias": (c,),
        "vision_proj.2.weight": (c, c),
        "vision_proj.2.bias": (c,),
        "plora_glb_GN": (1, 1, merged),
        "plora_sub_GN": (1, 1, 1, merged),
    }


def load_weights(path, cfg: XComposerConfig, **kwargs) -> dict:
    """Every tensor the model reads, validated first; kwargs: dtype, device, progress (hovle/loaders/weights.py)."""
    return checkpoint.load_weights(path, expected_tensors(cfg), UNUSED_TENSORS, ignored=ignored, **kwargs)
