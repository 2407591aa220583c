"""The embedded default model: small checkpoints in exactly the released layout.

Two kinds share the layout (real config.json schema, F32 sharded safetensors with an index, SentencePiece tokenizer
files). The TRAINED default model ships in hovle/data/default-model/<variant>/ (written by
tools/train_default_model.py): a tiny HoVLE / HoVLE-HD that answers questions about the procedural scenes of
`hovle.default_model.scenes` and knows nothing else. `ensure_default_model` returns its folder and `copy_default_model`
copies it. `write_default_model` writes a RANDOM-weight model instead (tests, benchmarks, the training script's
starting point): `config_dict` builds the config (real HoVLE sizes by default, so benchmarks can write a full-size
random checkpoint too) and `random_tensors` streams seeded random weights under the real tensor names.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from ..families.hovle.config import HoVLEConfig
from ..families.hovle.weights import expected_tensors
from ..loaders.tokenizer import TOKENIZER_FILES, Tokenizer
from .checkpoint import DEFAULT_MAX_SHARD_BYTES, atomic_folder, write_checkpoint
from .tokenizer_trainer import write_tokenizer_files

VARIANTS = ("hovle", "hovle-hd")
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SHIPPED_DIR = DATA_DIR / "default-model"  # the trained models, one folder per variant
EXAMPLE_IMAGE = DATA_DIR / "example.png"
EXAMPLE_QUESTIONS = DATA_DIR / "example_questions.json"
TINY = dict(hidden=256, intermediate=512, heads=4, kv_heads=2, emb_layers=2, llm_layers=4)


def _stack(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, rope: dict) -> dict[str, Any]:
    return {
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
        **rope,
    }


def config_dict(
    variant: str = "hovle",
    *,
    hidden: int = 2048,
    intermediate: int = 8192,
    heads: int = 16,
    kv_heads: int = 8,
    emb_layers: int = 8,
    llm_layers: int = 24,
    vocab_size: int = 92553,
    img_context_token_id: int = 92546,
    image_size: int = 448,
    patch_size: int = 14,
    emb_rope: dict | None = None,
    llm_rope: dict | None = None,
    normalize_encoder_output: bool = False,
    max_dynamic_patch: int = 12,
) -> dict[str, Any]:
    """config.json in the released schema; defaults are the real HoVLE sizes (docs/hovle.md §1.2-1.4)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}; expected one of {VARIANTS}")
    long_rope = {
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "max_position_embeddings": 32768,
    }
    emb = _stack(hidden, intermediate, emb_layers, heads, kv_heads, emb_rope or long_rope)
    emb.update(
        {
            "architectures": None,
            "model_type": "holistic_embedding",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "dropout": 0.0,
            "drop_path_rate": 0.0,
            "attn_implementation": "flash_attention_2",
            "downsample_ratio": 0.5,
            "image_size": image_size,
            "patch_size": patch_size,
            "num_channels": 3,
            "img_context_token_id": img_context_token_id,
            "initializer_factor": 1e-05,
            "llm_vocab_size": vocab_size,
            "llm_hidden_size": hidden,
            "mlp_bias": False,
            "pixel_shuffle_loc": "post" if variant == "hovle-hd" else "pre",
            "use_ls": False,
            "use_pixel_shuffle_proj": True,
            "special_token_maps": {},
            "pretraining_tp": 1,
            "use_cache": True,
        }
    )
    llm = _stack(hidden, intermediate, llm_layers, heads, kv_heads, llm_rope or long_rope)
    llm.update(
        {
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            "attn_implementation": "flash_attention_2",
            "auto_map": {
                "AutoConfig": "configuration_internlm2.InternLM2Config",
                "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
            },
            "bias": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "vocab_size": vocab_size,
        }
    )
    return {
        "_commit_hash": None,
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "embedding_config": emb,
        "force_image_size": image_size,
        "llm_config": llm,
        "max_dynamic_patch": max_dynamic_patch,
        "min_dynamic_patch": 1,
        "model_type": "internvl_chat",
        "normalize_encoder_output": normalize_encoder_output,
        "pad2square": False,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "internlm2-chat",
        "torch_dtype": "bfloat16",
        "transformers_version": None,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
    }


def _init_std(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of one random tensor: unit-scale activations, norms near 1, logits of order 1."""
    if name.endswith("norm.weight"):
        return 1.0, 0.1
    if "embedding" in name or name.endswith("tok_embeddings.weight") or name.endswith(".bias"):
        return 0.0, 1.0 if "text_embeddings" in name or "tok_embeddings" in name else 0.1
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    return 0.0, 1.0 / fan_in**0.5


def random_tensors(cfg: HoVLEConfig, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Seeded F32 tensors under the released names, one at a time (so a 10 GB checkpoint streams to disk)."""
    for name, shape in expected_tensors(cfg).items():
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        mean, std = _init_std(name, shape)
        yield name, torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean


def tokenizer_files(folder: str | Path) -> dict[str, bytes]:
    """A tokenizer folder's files by name, as bytes (to go into a checkpoint folder)."""
    names = (*TOKENIZER_FILES, "added_tokens.json")
    return {name: (Path(folder) / name).read_bytes() for name in names if (Path(folder) / name).is_file()}


def bundled_tokenizer() -> tuple[Tokenizer, dict[str, bytes]]:
    """The tokenizer trained on the bundled text, and its files' bytes (to go into a checkpoint folder)."""
    with tempfile.TemporaryDirectory(prefix=".hovle-tok-") as tmp:
        tok = write_tokenizer_files(Path(tmp) / "tok")
        return tok, tokenizer_files(Path(tmp) / "tok")


def write_default_model(
    dst: str | Path,
    variant: str = "hovle",
    *,
    overwrite: bool = False,
    tokenizer_dir: str | Path | None = None,
    tiny: bool = True,
    **sizes,
) -> Path:
    """Writes a model with RANDOM weights to `dst`, atomically: the TINY sizes (tiny=True, small shards) or the real
    HoVLE sizes (tiny=False, the release's 5 GB shards), `sizes` overriding either. Its tokenizer is trained on the
    bundled text, or copied from `tokenizer_dir` (the training script starts from its own tokenizer)."""
    dst = Path(dst)
    if tokenizer_dir is None:
        tok, files = bundled_tokenizer()
    else:
        tok = Tokenizer.from_dir(tokenizer_dir)
        files = tokenizer_files(tokenizer_dir)
    raw = config_dict(
        variant,
        vocab_size=tok.vocab_size,
        img_context_token_id=tok.img_context_id,
        **({**TINY, **sizes} if tiny else sizes),
    )
    cfg = HoVLEConfig.from_dict(raw)
    shard = 4 << 20 if tiny else DEFAULT_MAX_SHARD_BYTES  # tiny: still several shards, as a released checkpoint has
    write_checkpoint(dst, raw, random_tensors(cfg), max_shard_bytes=shard, extra_files=files, overwrite=overwrite)
    return dst


def ensure_default_model(variant: str = "hovle") -> Path:
    """The folder of the shipped trained default model of `variant` (read in place, nothing is written)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}; expected one of {VARIANTS}")
    path = SHIPPED_DIR / variant
    if not (path / "config.json").is_file():
        raise WeightsError(
            f"{path}: the trained default model is missing; rebuild it with `python -m tools.train_default_model`"
        )
    return path


def copy_default_model(dst: str | Path, variant: str = "hovle", *, overwrite: bool = False) -> Path:
    """Copies the shipped trained model of `variant` to `dst`, atomically, as write_checkpoint writes (an existing
    non-empty `dst` is replaced only with overwrite=True)."""
    src, dst = ensure_default_model(variant), Path(dst)
    with atomic_folder(dst, overwrite) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return dst


def example_questions() -> list[dict[str, str]]:
    """The bundled example picture's questions with their known answers: [{"question", "answer", "kind"}, ...]."""
    return json.loads(EXAMPLE_QUESTIONS.read_text(encoding="utf-8"))["questions"]
