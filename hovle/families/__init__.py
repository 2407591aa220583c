"""Model families: one folder each (config parsing, tensor names and layout, model assembly from the shared layers,
prompt template, image processing), found from a checkpoint's config.json through one registry, `FAMILIES`.

A family's `load(path, options, ops, device, dtype)` returns a `Loaded`: its config, tokenizer, model and request
builder. The runtime (hovle/runtime) is the same for every family and needs only this of the model:

    stacks            tuple[KVStack, ...]: the decoder stacks with a paged KV cache, in the order the runtime
                      indexes them (none for an encoder-only model); the last one produces the tokens
    device, dtype, ops, vocab_size
    plan_prompt(request, generated, all_logits) -> a prompt plan: resume(cached, page_size) gives the positions a
                      prefill restarts from when cached prefix pages are shared; drop_buffers() frees them
    prefill(work, caches, page_size) -> [(positions now cached per stack, fp32 logits or None)] for a list of
                      PrefillWork (chunks of several sequences in one packed forward per stack)
    decode(tokens, positions, tables, caches, max_kv) -> (B, V) fp32 logits of one new token per row, from device
                      tensors only (it is captured in a CUDA graph)

and of the request (the builder's output): stack_ids(k), stack_spans(k) (where each image's tokens sit in stack
k's sequence), image_keys (content hashes of the images, for prefix sharing), pixel_values, preprocess_s, tiles.
A new family adds its folder and one line to FAMILIES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..loaders.config import RopeConfig, read_config


@dataclass(frozen=True)
class KVStack:
    """One decoder stack with a paged KV cache, as the runtime sizes and schedules it."""

    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    rope: RopeConfig
    positions_per_token: int = 1  # most positions this stack holds per position of the token stack (sizing)
    grows_in_decode: bool = True  # a decode step stores the new token's keys here
    shares_decoded_pages: bool = True  # pages filled while decoding may serve a later prompt's prefix


@dataclass
class Loaded:
    """What a family hands the engine: config, tokenizer, model, and the builder of requests."""

    cfg: Any
    tokenizer: Any
    model: Any
    builder: Any
    stop_ids: tuple[int, ...] = ()  # generation ends at any of these (default: the tokenizer's <|im_end|>)
    name: str = ""  # what the model is, for people ("HoVLE-HD", "InternLM-XComposer2-4KHD")


@dataclass(frozen=True)
class Family:
    name: str
    matches: Callable[[dict], bool]  # config.json's dict -> is it this family's?
    load: Callable[..., Loaded]


def _families() -> list[Family]:
    from .hovle import FAMILY as HOVLE
    from .xcomposer import FAMILY as XCOMPOSER

    return [HOVLE, XCOMPOSER]


def family_for(path: str | Path) -> Family:
    """The family whose `matches` accepts the folder's config.json (architectures / model_type)."""
    raw = read_config(path)
    found = [f for f in _families() if f.matches(raw)]
    if not found:
        names = raw.get("architectures"), raw.get("model_type")
        raise ConfigError(
            f"{Path(path).expanduser() / 'config.json'}: architectures {names[0]!r}, model_type "
            f"{names[1]!r} belong to no family this engine runs; it runs "
            f"{[f.name for f in _families()]}"
        )
    return found[0]
