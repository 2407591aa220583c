"""Reuse of the KV caches across single-sequence requests: multi-turn chat prefills only the new turn.

After a single-sequence generation the caches (slot 0) hold the prompt and the tokens fed back during decoding. A
next request whose token ids start with those only needs its new tokens prefilled on top of the cached prefix (the
attention ops attend to a cached prefix). Reuse is exact only when every cached key is what a fresh prefill would
compute, so it is skipped where that fails: dynamic-NTK RoPE past max_position_embeddings (cached keys keep the
base of their own forward), the HD reference-quirk decode (generated tokens never enter the embedding cache), and a
suffix holding image tokens (their pixels would have to be re-embedded in the middle of a sequence), and a prefix
whose images differ from the cached ones (equal token ids, other pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import HoVLEConfig


@dataclass
class CachedSequence:
    owner: object  # the DecodeRunner whose caches hold these tokens (slot 0)
    ids_llm: list[int]
    ids_emb: list[int]
    pixels: torch.Tensor | None  # the tiles whose features fill the cached image tokens


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reusable_prefix(cfg: HoVLEConfig, cached: CachedSequence, ids_emb: list[int], ids_llm: list[int], pixels):
    """(embedding-cache prefix, LLM-cache prefix) of a new request already in the caches, or None."""
    same_images = (pixels is None and cached.pixels is None) or (
        pixels is not None and cached.pixels is not None and torch.equal(pixels, cached.pixels)
    )
    if not same_images:
        return None
    for stack, n in ((cfg.embedding.stack, len(ids_emb)), (cfg.llm.stack, len(ids_llm))):
        if stack.rope.scaling == "dynamic" and n > stack.rope.max_position_embeddings:
            return None
    # Keep at least one token to prefill: its logits start the answer.
    llm = min(_common_prefix(cached.ids_llm, ids_llm), len(ids_llm) - 1)
    emb = llm + len(ids_emb) - len(ids_llm)  # HoVLE-HD: the image runs (all in the prefix) are longer there
    if llm < 1 or not 1 <= emb <= len(cached.ids_emb) or ids_emb[:emb] != cached.ids_emb[:emb]:
        return None
    suffix = ids_llm[llm:]
    if ids_emb[emb:] != suffix or cfg.embedding.img_context_token_id in suffix:
        return None
    return emb, llm
