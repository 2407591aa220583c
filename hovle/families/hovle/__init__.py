"""HoVLE and HoVLE-HD (OpenGVLab): the holistic embedding module and InternLM2 on top, two KV stacks.

config.py   config.json -> HoVLEConfig          weights.py  the released tensor names and shapes
model.py    HoVLEModel (both stacks, prefill pipeline, decode step)
prefill.py  one prompt's chunked prefill (HoVLE-HD's LLM tokens wait for their tile's embedding rows)
request.py  chat messages + images -> the ids of both stacks, tiles, image keys
"""

from __future__ import annotations

from ...errors import TokenizerError
from ...loaders.tokenizer import Tokenizer
from ...prompt import get_template
from .. import Family, Loaded
from .config import HoVLEConfig
from .model import HoVLEModel, Stack
from .request import Request, RequestBuilder
from .weights import load_weights


def _matches(raw: dict) -> bool:
    """HoVLE's config.json: InternVL's chat wrapper with an `embedding_config` (the holistic embedding module)."""
    return isinstance(raw.get("embedding_config"), dict) and isinstance(raw.get("llm_config"), dict)


def check_tokenizer(cfg: HoVLEConfig, tok: Tokenizer, template) -> None:
    if tok.img_context_id != cfg.embedding.img_context_token_id:
        raise TokenizerError(
            f"tokenizer files give <IMG_CONTEXT> id {tok.img_context_id} but config.json says "
            f"img_context_token_id {cfg.embedding.img_context_token_id}"
        )
    if tok.vocab_size > cfg.llm.vocab_size:
        raise TokenizerError(f"tokenizer has {tok.vocab_size} ids but the model's vocabulary is {cfg.llm.vocab_size}")
    for token in (template.start, template.sep):
        tok.token_id(token)  # raises TokenizerError naming the missing control token


def load(path, options, ops, device, dtype) -> Loaded:
    """Config, tokenizer (checked against the config and the template) and weights, in that order: every check that
    needs no tensor data runs before any tensor data is read."""
    cfg = HoVLEConfig.from_dir(path)
    tokenizer = Tokenizer.from_dir(path)
    template = get_template(cfg.template)
    check_tokenizer(cfg, tokenizer, template)
    weights = load_weights(path, cfg, dtype=dtype, device=device, progress=options.progress)
    model = HoVLEModel(cfg, weights, ops, options.hd_decode)
    builder = RequestBuilder(
        cfg, tokenizer, template, options.max_tiles or max(cfg.max_dynamic_patch, 1), options.preprocess
    )
    return Loaded(cfg, tokenizer, model, builder, name="HoVLE-HD" if cfg.is_hd else "HoVLE")


FAMILY = Family("hovle", _matches, load)

__all__ = ["FAMILY", "HoVLEConfig", "HoVLEModel", "Request", "RequestBuilder", "Stack", "check_tokenizer", "load"]
