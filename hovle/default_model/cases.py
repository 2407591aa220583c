"""The comparison cases of the engine against the reference: tiny checkpoints in the real released layout (written by
the default-model writer), seeded test images, and the named cases (variant, config overrides, images, tile budget,
question) that the tests, the CPU benchmark and the GPU check all run."""

from pathlib import Path

import numpy as np
from PIL import Image

from hovle.default_model.folder import write_default_model

SMALL = dict(hidden=64, intermediate=128, heads=4, kv_heads=2, emb_layers=2, llm_layers=2, image_size=56)


def make_checkpoint(root: Path, name: str, variant: str = "hovle", **overrides) -> Path:
    """Writes (once per root) a tiny checkpoint; `overrides` go to default_model.config_dict."""
    path = root / name
    if not (path / "config.json").is_file():
        write_default_model(path, variant, **{**SMALL, **overrides})
    return path


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """A seeded random RGB image with some smooth structure (never constant)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), (x + y) % 256], axis=-1)
    noisy = (base + rng.integers(0, 64, size=base.shape)) % 256
    return Image.fromarray(noisy.astype(np.uint8), "RGB")


DYNAMIC_SMALL = {
    "rope_theta": 10000.0,
    "rope_scaling": {"type": "dynamic", "factor": 2.0},
    "max_position_embeddings": 48,
}
LINEAR = {"rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 2.0}, "max_position_embeddings": 64}

CASES = {
    # name: (variant, config overrides, images as (w, h, seed), max_num, question)
    "text_only": ("hovle", {}, [], 1, "What is a circle?"),
    "one_tile": ("hovle", {}, [(60, 50, 1)], 1, "Describe the image."),
    "tiles_thumbnail": ("hovle", {}, [(150, 60, 2)], 6, "Describe the image."),
    "two_images": ("hovle", {}, [(90, 40, 3), (40, 90, 4)], 4, "Image-1: <image>\nImage-2: <image>\nCompare them."),
    "hd": ("hovle-hd", {}, [(150, 60, 5)], 6, "Describe the image."),
    "hd_two_images": ("hovle-hd", {}, [(60, 60, 6), (120, 50, 7)], 3, "<image>\n<image>\nWhat differs?"),
    "normalize": ("hovle", {"normalize_encoder_output": True}, [(100, 60, 8)], 2, "Describe it."),
    "hd_normalize": ("hovle-hd", {"normalize_encoder_output": True}, [(60, 60, 9)], 1, "Describe it."),
    "dynamic_ntk": ("hovle", {"emb_rope": DYNAMIC_SMALL, "llm_rope": DYNAMIC_SMALL}, [(60, 60, 10)], 1, "Hi."),
    "linear_rope": ("hovle", {"emb_rope": LINEAR, "llm_rope": LINEAR}, [], 1, "Tell me about colours."),
    "gqa3_head64": ("hovle", {"hidden": 384, "heads": 6, "kv_heads": 2, "intermediate": 256}, [(60, 60, 11)], 1, "Hi."),
    "mha": ("hovle", {"heads": 4, "kv_heads": 4}, [(60, 60, 12)], 1, "Hi."),
    "gqa4": ("hovle-hd", {"hidden": 128, "heads": 8, "kv_heads": 2}, [(70, 60, 13)], 2, "Hi."),
}
