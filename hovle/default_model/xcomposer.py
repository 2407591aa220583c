"""Random-weight InternLM-XComposer2-4KHD folders in the released layout: the real config.json schema, bf16 pickle
shards (`pytorch_model-0000i-of-0000N.bin`) with `pytorch_model.bin.index.json`, an InternLM2 SentencePiece tokenizer
whose last pieces are [UNUSED_TOKEN_141..146]. TINY sizes for tests (a 2-layer CLIP of width 128 at the real 336 px
crops, a 2-layer LLM of width 128), or the release's sizes (~8.6 B parameters, ~17 GB) for the GPU benchmark.
"""

from __future__ import annotations

import json
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch

from ..families.xcomposer.config import XComposerConfig
from ..families.xcomposer.weights import expected_tensors
from ..layers.clip import ClipVisionConfig
from .checkpoint import atomic_folder
from .folder import _init_std, tokenizer_files
from .tokenizer_trainer import write_tokenizer_files

VARIANT = "xcomposer2-4khd"
FULL = dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=32, vision_width=1024, vision_layers=24)
FULL_RANKS = {"wqkv": 8, "wo": 256, "w1": 256, "w3": 256, "w2": 256}
TINY = dict(hidden=128, intermediate=256, heads=4, kv_heads=2, layers=2, vision_width=128, vision_layers=2)
TINY_RANKS = {"wqkv": 4, "wo": 8, "w1": 8, "w3": 8, "w2": 8}
TINY_SHARD_BYTES = 1 << 20
FULL_SHARD_BYTES = 10_000_000_000  # the release's first shard is 10 GB


def config_dict(
    *, hidden: int, intermediate: int, heads: int, kv_heads: int, layers: int, vocab_size: int, **_
) -> dict:
    """config.json with the release's keys (InternLM2-7B's, rope_theta 1e6, no scaling)."""
    return {
        "architectures": ["InternLMXComposer2ForCausalLM"],
        "attn_implementation": "flash_attention_2",
        "auto_map": {
            "AutoConfig": "configuration_internlm_xcomposer2.InternLMXcomposer2Config",
            "AutoModel": "modeling_internlm_xcomposer2.InternLMXComposer2ForCausalLM",
            "AutoModelForCausalLM": "modeling_internlm_xcomposer2.InternLMXComposer2ForCausalLM",
        },
        "bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_length": 16384,
        "max_position_embeddings": 32768,
        "model_type": "internlmxcomposer2",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "pad_token_id": 2,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def _config(raw: dict, sizes: dict, ranks: dict) -> XComposerConfig:
    """The config the engine will read back (its vision sizes come from shapes: the ones written here)."""
    from ..loaders.config import ConfigReader, stack_config

    w = sizes["vision_width"]
    vision = ClipVisionConfig(w, 4 * w, sizes["vision_layers"], max(1, w // 64), 14, 336)
    return XComposerConfig(
        stack_config(ConfigReader(raw, "config.json")), raw["vocab_size"], 1, 2, 16384, vision, ranks
    )


def _random(cfg: XComposerConfig, seed: int, device: str = "cpu"):
    """Seeded bf16 tensors under the released names, one at a time; drawn on `device` (a GPU draws 17 GB in
    seconds), returned on the CPU."""
    for name, shape in expected_tensors(cfg).items():
        gen = torch.Generator(device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        mean, std = _init_std(name, shape)
        if "Plora_B" in name:  # PLoRA updates of the scale of the base weights' own (B is zero at the authors' init)
            std = 0.5 / shape[1] ** 0.5
        yield name, (torch.randn(shape, generator=gen, device=device) * std + mean).to(torch.bfloat16).cpu()


def _write_shards(tmp: Path, items, max_bytes: int, fmt: str) -> None:
    """Shards filled greedily in order, and their index: pickle (torch.save, the release's form) or safetensors."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = total = 0
    for name, t in items:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
        total += t.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        if fmt == "bin":
            fname = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
            torch.save(shard, tmp / fname)
        else:
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(tmp / fname), metadata={"format": "pt"})
        weight_map |= {name: fname for name in shard}
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    index_name = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (tmp / index_name).write_text(json.dumps(index, indent=2))


def write_xcomposer_model(
    dst: str | Path, *, tiny: bool = True, overwrite: bool = False, seed: int = 0, fmt: str = "bin", device: str = "cpu"
) -> Path:
    """A random-weight XComposer2-4KHD folder at `dst`, written atomically (see the module docstring). fmt "bin"
    (the release's pickle shards) or "safetensors" (the converted form: faster to write and load, for benchmarks);
    device: where the random weights are drawn."""
    sizes, ranks = (TINY, TINY_RANKS) if tiny else (FULL, FULL_RANKS)
    with tempfile.TemporaryDirectory(prefix=".hovle-xc-tok-") as tok_tmp:
        tok = write_tokenizer_files(Path(tok_tmp) / "tok", vocab_size=2048, layout="xcomposer2")
        files = tokenizer_files(Path(tok_tmp) / "tok")
    vocab = tok.vocab_size if tiny else 92544
    raw: dict[str, Any] = config_dict(**sizes, vocab_size=vocab)
    cfg = _config(raw, sizes, ranks)
    with atomic_folder(Path(dst), overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(raw, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps({"max_length": 4480, "transformers_version": "4.33.1"}))
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        _write_shards(tmp, _random(cfg, seed, device), TINY_SHARD_BYTES if tiny else FULL_SHARD_BYTES, fmt)
    return Path(dst)
