"""The engine's options checked before anything is loaded: device and dtype, counts, the tokenizer against the
config and the template."""

from __future__ import annotations

from typing import Any

import torch

from .errors import InputError, TokenizerError
from .loaders.config import HoVLEConfig
from .loaders.tokenizer import Tokenizer

IDLE_CHUNK = 16384  # prefill positions per forward while nothing decodes (unless prefill_chunk is set)
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}  # fmt: skip


def resolve_device_dtype(device: Any, dtype: Any) -> tuple[torch.device, torch.dtype]:
    try:
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a device torch knows; expected cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {device} is not supported; expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} was asked for but torch sees no CUDA device")
    if dtype is None:
        return device, (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise InputError(f"dtype {dtype!r} is not supported; choose one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise InputError(f"dtype {dtype} is not supported; expected float32, bfloat16 or float16")
    return device, dtype


def positive_int(name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} = {value!r}; expected a positive integer{' or None' if allow_none else ''}")



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
