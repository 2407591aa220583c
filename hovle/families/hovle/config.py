"""HoVLE / HoVLE-HD's config.json (top level, `embedding_config`, `llm_config`) as frozen dataclasses.

Every value that varies between the released checkpoints or that the authors' code reads from the file (rope
settings, eps, heads, pixel_shuffle_loc, normalize_encoder_output, use_thumbnail, max_dynamic_patch, template,
token ids) is read from it; nothing is hard-coded. Values the engine cannot run (biases, other activations, other
downsample ratios, tied heads, LoRA) raise ConfigError naming the key, the value found and what is supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...loaders.config import ConfigReader, StackConfig, read_config, stack_config

SUPPORTED_TEMPLATES = ("internlm2-chat",)


@dataclass(frozen=True)
class EmbeddingConfig:
    """The holistic embedding module: patch embedding, text table, causal layers, pixel-shuffle projection."""

    stack: StackConfig
    image_size: int  # size the position embedding was trained for
    patch_size: int
    num_channels: int
    downsample_ratio: float
    pixel_shuffle_loc: str  # "pre" (HoVLE) or "post" (HoVLE-HD)
    img_context_token_id: int
    llm_vocab_size: int
    llm_hidden_size: int


@dataclass(frozen=True)
class LLMConfig:
    """The InternLM2 language model on top of the embedding module."""

    stack: StackConfig
    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int | None


@dataclass(frozen=True)
class HoVLEConfig:
    """The whole model plus the chat-level settings (template, tiling) from the top level of config.json."""

    embedding: EmbeddingConfig
    llm: LLMConfig
    template: str
    image_size: int  # tile size fed to the model (force_image_size, else the embedding image_size)
    dynamic_image_size: bool
    use_thumbnail: bool
    min_dynamic_patch: int
    max_dynamic_patch: int
    normalize_encoder_output: bool

    @property
    def is_hd(self) -> bool:
        return self.embedding.pixel_shuffle_loc == "post"

    @property
    def patch_grid(self) -> int:
        """Patches per side of one tile."""
        return self.image_size // self.embedding.patch_size

    @property
    def patches_per_tile(self) -> int:
        """Embedding-sequence tokens per tile in "post" mode (1024 for 448 px tiles)."""
        return self.patch_grid**2

    @property
    def tokens_per_tile(self) -> int:
        """LLM-sequence tokens per tile after the pixel shuffle (256 for 448 px tiles)."""
        return int(self.patches_per_tile * self.embedding.downsample_ratio**2)

    @property
    def emb_tokens_per_tile(self) -> int:
        """IMG_CONTEXT tokens per tile in the embedding module's own sequence."""
        return self.patches_per_tile if self.is_hd else self.tokens_per_tile

    @classmethod
    def from_dir(cls, path: str | Path) -> HoVLEConfig:
        return cls.from_dict(read_config(path), source=str(Path(path).expanduser() / "config.json"))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> HoVLEConfig:
        r = ConfigReader(raw, source)
        _check_top_level(r)
        emb = _embedding_config(ConfigReader(r.get("embedding_config", dict), f"{source}:embedding_config"))
        llm = _llm_config(ConfigReader(r.get("llm_config", dict), f"{source}:llm_config"))
        if emb.llm_hidden_size != llm.stack.hidden_size or emb.stack.hidden_size != llm.stack.hidden_size:
            raise ConfigError(
                f"{source}: embedding hidden_size {emb.stack.hidden_size} / llm_hidden_size {emb.llm_hidden_size} "
                f"must equal llm_config.hidden_size {llm.stack.hidden_size}"
            )
        if emb.llm_vocab_size != llm.vocab_size:
            raise ConfigError(f"{source}: embedding llm_vocab_size {emb.llm_vocab_size} != vocab {llm.vocab_size}")
        if not 0 <= emb.img_context_token_id < llm.vocab_size:
            raise ConfigError(f"{source}: img_context_token_id {emb.img_context_token_id} outside the vocabulary")
        ratio = r.get("downsample_ratio", float, default=emb.downsample_ratio)
        if ratio != emb.downsample_ratio:
            raise ConfigError(f"{source}: downsample_ratio {ratio} differs from embedding_config's")
        template = r.get("template", str, default=None)
        if template not in SUPPORTED_TEMPLATES:
            raise ConfigError(f"{source}: template {template!r} is not supported; supported: {SUPPORTED_TEMPLATES}")
        image_size = r.get("force_image_size", int, default=None) or emb.image_size
        cfg = cls(
            embedding=emb,
            llm=llm,
            template=template,
            image_size=image_size,
            dynamic_image_size=r.get("dynamic_image_size", bool, default=False),
            use_thumbnail=r.get("use_thumbnail", bool, default=False),
            min_dynamic_patch=r.get("min_dynamic_patch", int, default=1),
            max_dynamic_patch=r.get("max_dynamic_patch", int, default=6),
            normalize_encoder_output=r.get("normalize_encoder_output", bool, default=False),
        )
        _check_geometry(cfg, source)
        return cfg


def _check_top_level(r: ConfigReader) -> None:
    r.require("use_backbone_lora", (0, False), default=0)
    r.require("use_llm_lora", (0, False), default=0)
    r.require("pad2square", (False,), default=False)


def _embedding_config(r: ConfigReader) -> EmbeddingConfig:
    for key in ("attention_bias", "mlp_bias", "use_ls"):
        r.require(key, (False,), default=False)
    r.require("use_pixel_shuffle_proj", (True,), default=True)
    if r.raw.get("special_token_maps"):
        raise ConfigError(f"{r.source}: special_token_maps is not supported (expected {{}})")
    return EmbeddingConfig(
        stack=stack_config(r),
        image_size=r.positive("image_size"),
        patch_size=r.positive("patch_size"),
        num_channels=r.require("num_channels", (3,), default=3),
        downsample_ratio=r.require("downsample_ratio", (0.5,), default=0.5),
        pixel_shuffle_loc=r.require("pixel_shuffle_loc", ("pre", "post"), default="pre"),
        img_context_token_id=r.get("img_context_token_id", int),
        llm_vocab_size=r.positive("llm_vocab_size"),
        llm_hidden_size=r.positive("llm_hidden_size"),
    )


def _llm_config(r: ConfigReader) -> LLMConfig:
    archs = r.get("architectures", list, default=["InternLM2ForCausalLM"])
    if archs[:1] != ["InternLM2ForCausalLM"]:
        raise ConfigError(f"{r.source}: architectures {archs} not supported; expected ['InternLM2ForCausalLM']")
    r.require("bias", (False,), default=False)
    r.require("tie_word_embeddings", (False,), default=False)
    return LLMConfig(
        stack=stack_config(r),
        vocab_size=r.positive("vocab_size"),
        bos_token_id=r.get("bos_token_id", int, default=1),
        eos_token_id=r.get("eos_token_id", int, default=2),
        pad_token_id=r.get("pad_token_id", int, default=None),
    )


def _check_geometry(cfg: HoVLEConfig, source: str) -> None:
    e = cfg.embedding
    for size in (cfg.image_size, e.image_size):
        if size % e.patch_size or (size // e.patch_size) % 2:
            raise ConfigError(
                f"{source}: image size {size} must be an even multiple of patch_size {e.patch_size} "
                "(the pixel shuffle merges 2x2 patches)"
            )
    if not 1 <= cfg.min_dynamic_patch <= cfg.max_dynamic_patch:
        raise ConfigError(
            f"{source}: min_dynamic_patch {cfg.min_dynamic_patch} / max_dynamic_patch {cfg.max_dynamic_patch}; "
            "expected 1 <= min <= max"
        )
