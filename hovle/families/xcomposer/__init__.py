"""InternLM-XComposer2-4KHD (Shanghai AI Laboratory): CLIP ViT-L/14-336 over an HD-N partition of the image, a 2x2
merge and an MLP projector, InternLM2-7B with Partial LoRA on the image rows. One KV stack.

config.py   config.json + checkpoint shapes -> XComposerConfig      weights.py  the released tensor names and shapes
hd.py       the HD transform (global view + 336 px crops)           vision.py   tower, merge, separators, projector
request.py  messages + images -> ids, image spans, crops            model.py    prefill with PLoRA, decode
"""

from __future__ import annotations

from ...errors import TokenizerError
from ...loaders.tokenizer import Tokenizer
from ...prompt import get_template
from .. import Family, Loaded
from .config import ARCHITECTURES, MODEL_TYPES, XComposerConfig
from .model import XComposerModel
from .request import RequestBuilder
from .weights import load_weights

TEMPLATE = "xcomposer2"
DEFAULT_MAX_TILES = 65  # the largest hd_num the authors evaluate with (DocVQA / InfoVQA); max_tiles raises it


def _matches(raw: dict) -> bool:
    archs = raw.get("architectures")
    return raw.get("model_type") in MODEL_TYPES or (isinstance(archs, list) and bool(set(archs) & set(ARCHITECTURES)))


def load(path, options, ops, device, dtype) -> Loaded:
    """Config (with the sizes the checkpoint's headers give), tokenizer, then the weights."""
    cfg = XComposerConfig.from_dir(path)
    template = get_template(TEMPLATE)
    tokenizer = Tokenizer.from_dir(path, control_tokens=(template.start, template.sep))
    if tokenizer.vocab_size > cfg.vocab_size:
        raise TokenizerError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary is {cfg.vocab_size}")
    weights = load_weights(path, cfg, dtype=dtype, device=device, progress=options.progress)
    model = XComposerModel(cfg, weights, ops)
    max_tiles = options.max_tiles or DEFAULT_MAX_TILES
    builder = RequestBuilder(cfg, tokenizer, template, max_tiles, options.bos_placement)
    stops = (cfg.eos_token_id, tokenizer.token_id(template.sep))
    return Loaded(cfg, tokenizer, model, builder, stop_ids=stops, name="InternLM-XComposer2-4KHD")


FAMILY = Family("xcomposer2-4khd", _matches, load)

__all__ = ["FAMILY", "XComposerConfig", "XComposerModel", "RequestBuilder", "load"]
