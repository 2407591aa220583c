"""InternLM-XComposer2-4KHD's configuration: config.json for the LLM, the checkpoint itself for the rest.

config.json is InternLM2's (hidden size, heads, GQA, RMSNorm eps, rope_theta and rope_scaling, vocabulary, token
ids, max_length). The vision tower is not described there (the authors' code builds CLIP ViT-L/14-336 from its own
Hugging Face config), so its sizes come from the checkpoint's tensor shapes: width from the class embedding, MLP
width from fc1, patch size from the conv, image size from the position table, depth from the layer count; the head
count from an optional `vision_config.num_attention_heads`, else width / 64 (every CLIP ViT uses 64-wide heads).
The PLoRA ranks come from the Plora_A shapes; their scales (alpha / r of the release: 16 / 8 for wqkv, 256 / 256 for
the others) are fixed by the authors' modeling code, not by any file, so they are constants here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError, WeightsError
from ...layers.clip import ClipVisionConfig
from ...layers.decoder import LORA_LINEARS
from ...loaders.config import ConfigReader, StackConfig, read_config, stack_config
from ...loaders.weights import checkpoint_shapes

ARCHITECTURES = ("InternLMXComposer2ForCausalLM",)
MODEL_TYPES = ("internlmxcomposer2",)
VIT = "vit.vision_tower.vision_model."
LORA_SCALES = {"wqkv": 2.0, "wo": 1.0, "w1": 1.0, "w3": 1.0, "w2": 1.0}
CROP = 336  # the HD transform's crop size: the vision tower's input, checked against the position table
MERGE = 2  # 2x2 neighbouring patch features are concatenated into one token before the projector
DEFAULT_HD_NUM = 25  # chat()'s default tile budget


@dataclass(frozen=True)
class XComposerConfig:
    llm: StackConfig
    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    max_length: int  # the authors truncate prompts here; the engine refuses longer ones instead
    vision: ClipVisionConfig
    lora_ranks: dict  # projection -> rank

    @property
    def tokens_per_crop(self) -> int:
        """Merged tokens of one 336 px crop: (24 / 2)^2 = 144."""
        return (self.vision.grid // MERGE) ** 2

    @property
    def merged_width(self) -> int:
        return self.vision.hidden_size * MERGE * MERGE

    def image_tokens(self, rows: int, cols: int) -> int:
        """LLM positions of one image of rows x cols crops: global view + newlines, separator, crops + newlines."""
        side = self.vision.grid // MERGE
        return (rows * cols + 1) * side * side + 1 + (rows + 1) * side

    @classmethod
    def from_dir(cls, path: str | Path) -> XComposerConfig:
        source = str(Path(path).expanduser() / "config.json")
        r = ConfigReader(read_config(path), source)
        llm = stack_config(r)
        if r.get("bias", bool, default=False):
            raise ConfigError(f"{source}: 'bias' = true is not supported (the released model has no biases)")
        if r.get("tie_word_embeddings", bool, default=False):
            raise ConfigError(f"{source}: 'tie_word_embeddings' = true is not supported")
        shapes = checkpoint_shapes(path)
        return cls(
            llm=llm,
            vocab_size=r.positive("vocab_size"),
            bos_token_id=r.get("bos_token_id", int, default=1),
            eos_token_id=r.get("eos_token_id", int, default=2),
            max_length=r.positive("max_length", int, default=16384),
            vision=_vision(shapes, r, source),
            lora_ranks=_lora_ranks(shapes, llm),
        )


def _shape(shapes: dict, name: str, dims: int) -> tuple[int, ...]:
    if name not in shapes:
        raise WeightsError(f"tensor {name!r} is missing: the vision tower's sizes are read from it")
    if len(shapes[name]) != dims:
        raise WeightsError(f"tensor {name!r} has shape {list(shapes[name])}; expected {dims} dimensions")
    return shapes[name]


def _vision(shapes: dict, r: ConfigReader, source: str) -> ClipVisionConfig:
    (width,) = _shape(shapes, VIT + "embeddings.class_embedding", 1)
    inner, _ = _shape(shapes, VIT + "encoder.layers.0.mlp.fc1.weight", 2)
    _, channels, patch, _ = _shape(shapes, VIT + "embeddings.patch_embedding.weight", 4)
    positions, _ = _shape(shapes, VIT + "embeddings.position_embedding.weight", 2)
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1 or grid * patch != CROP or grid % MERGE or channels != 3:
        raise WeightsError(
            f"{VIT}embeddings: {positions} positions of {patch} px patches over {channels} channels; expected "
            f"1 + g*g positions with g * patch = {CROP} (the HD crop), g even, and RGB input"
        )
    pattern = re.compile(re.escape(VIT) + r"encoder\.layers\.(\d+)\.")
    depth = 1 + max(int(m.group(1)) for name in shapes if (m := pattern.match(name)))
    sub = r.get("vision_config", dict, default=None)
    heads = ConfigReader(sub, f"{source}:vision_config").positive("num_attention_heads") if sub else width // 64
    if heads < 1 or width % heads:
        raise ConfigError(f"{source}: the vision width {width} does not split into {heads} heads")
    return ClipVisionConfig(width, inner, depth, heads, patch, grid * patch, 1e-5, "quick_gelu")


def _lora_ranks(shapes: dict, llm: StackConfig) -> dict:
    """Each projection's PLoRA rank, read from layer 0's Plora_A (the strict check holds every layer to it)."""
    ranks = {}
    for short, name in LORA_LINEARS.items():
        ranks[short] = _shape(shapes, f"model.layers.0.{name}.Plora_A.weight", 2)[0]
    return ranks
