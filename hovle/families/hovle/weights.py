"""HoVLE's tensor names and shapes as released, derived from the config (what the strict loader checks).

The embedding module (`embedding_model.`: patch embedding, position table, text table, its InternLM2 layers, the
pixel-shuffle projection) and the LLM (`language_model.`: InternLM2 layers, final norm, output head).
"""

from __future__ import annotations

from ...layers.decoder import layer_shapes
from ...loaders import weights as safetensors_files
from .config import HoVLEConfig

# Present in the release and validated, but never read: the CLS embedding is unused at inference, and the multimodal
# path embeds text with embedding_model.llm_text_embeddings, not the LLM's own table.
UNUSED_TENSORS = frozenset(
    {"embedding_model.vision_embeddings.class_embedding", "language_model.model.tok_embeddings.weight"}
)


def expected_tensors(cfg: HoVLEConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the released checkpoint with its shape."""
    e, llm = cfg.embedding, cfg.llm
    c, p, c_llm, v = e.stack.hidden_size, e.patch_size, llm.stack.hidden_size, llm.vocab_size
    grid = e.image_size // p  # position table is trained for image_size, whatever force_image_size says
    merged = round(c / e.downsample_ratio**2)  # the pixel shuffle folds (1/ratio)^2 patches into channels
    vis = "embedding_model.vision_embeddings."
    return {
        vis + "patch_embedding.weight": (c, e.num_channels, p, p),
        vis + "patch_embedding.bias": (c,),
        vis + "position_embedding": (1, grid * grid + 1, c),
        vis + "class_embedding": (1, 1, c),
        "embedding_model.llm_text_embeddings.weight": (e.llm_vocab_size, c),
        **layer_shapes("embedding_model.encoder", e.stack),
        "embedding_model.pixel_shuffle_proj.0.weight": (c_llm, merged),
        "embedding_model.pixel_shuffle_proj.0.bias": (c_llm,),
        "embedding_model.pixel_shuffle_proj.2.weight": (c_llm, c_llm),
        "embedding_model.pixel_shuffle_proj.2.bias": (c_llm,),
        "language_model.model.tok_embeddings.weight": (v, c_llm),
        **layer_shapes("language_model.model.layers", llm.stack),
        "language_model.model.norm.weight": (c_llm,),
        "language_model.output.weight": (v, c_llm),
    }


def validate_checkpoint(path, cfg: HoVLEConfig) -> dict:
    """Every shard header checked against HoVLE's layout for `cfg`; reads no tensor data."""
    return safetensors_files.validate_checkpoint(path, expected_tensors(cfg))


def load_weights(path, cfg: HoVLEConfig, **kwargs) -> dict:
    """HoVLE's tensors (all but UNUSED_TENSORS) by checkpoint name, validated first; kwargs: dtype, device,
    progress (hovle/loaders/weights.py)."""
    return safetensors_files.load_weights(path, expected_tensors(cfg), UNUSED_TENSORS, **kwargs)
