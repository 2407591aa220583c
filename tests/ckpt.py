"""Tiny checkpoints in the real released layout for the tests (written by the engine's default-model writer)."""

from pathlib import Path

import numpy as np
from PIL import Image

from engine.tooling.default_model import write_default_model

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
