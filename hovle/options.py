"""The engine's options: one object, checked in one place before anything is loaded (Engine.from_pretrained, the
CLI and the server all build it). Each bad value raises InputError naming the option, the value and what is
expected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError
from .loaders.image import PREPROCESS_PATHS

IDLE_CHUNK = 16384  # prefill positions per forward while nothing decodes (unless prefill_chunk is set)
MAX_TILES_CAP = 128  # no option raises the per-image tile budget past this (32k LLM tokens per image)
HD_DECODE_MODES = ("natural", "reference-quirk")
BOS_PLACEMENTS = ("per-segment", "first")  # XComposer2: BOS before each text piece (the authors' chat()) or once
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_COUNTS = ("max_context", "max_batch", "max_queue", "max_tiles", "kv_cache_memory", "kv_page_size", "prefill_chunk")


@dataclass(frozen=True)
class EngineOptions:
    """What Engine.from_pretrained takes besides the model folder (the README lists what each one does)."""

    device: Any = None
    dtype: Any = None
    backend: str = "auto"
    hd_decode: str = "natural"
    max_context: int | None = None
    progress: bool | None = None
    cuda_graphs: bool = True
    preprocess: str = "auto"
    max_batch: int | None = None
    max_queue: int = 1024
    max_tiles: int | None = None
    kv_cache_memory: int | None = None
    kv_page_size: int | None = None
    prefill_chunk: int | None = None
    prefix_caching: bool = True
    bos_placement: str = "per-segment"

    def checked(self) -> EngineOptions:
        """These options with device and dtype resolved to torch objects; InputError for the first bad value."""
        from .runtime.decode import BUCKETS
        from .runtime.sizing import kv_cache_cap

        device, dtype = resolve_device_dtype(self.device, self.dtype)
        _choice("preprocess", self.preprocess, PREPROCESS_PATHS)
        _choice("hd_decode", self.hd_decode, HD_DECODE_MODES)
        _choice("bos_placement", self.bos_placement, BOS_PLACEMENTS)
        for name in _COUNTS:
            positive_int(name, getattr(self, name), allow_none=name != "max_queue")
        if self.max_tiles is not None and self.max_tiles > MAX_TILES_CAP:
            raise InputError(f"max_tiles = {self.max_tiles}; the hard cap is {MAX_TILES_CAP} tiles per image")
        if self.max_context is not None and self.max_context < 2:
            raise InputError(f"max_context = {self.max_context!r}; expected an integer >= 2")
        if self.max_batch is not None and self.max_batch > BUCKETS[-1]:
            raise InputError(f"max_batch = {self.max_batch}; at most {BUCKETS[-1]} sequences decode at once")
        for name in ("cuda_graphs", "prefix_caching"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} = {getattr(self, name)!r}; expected True or False")
        kv_cache_cap()  # a bad HOVLE_KV_CACHE_CAP is reported before loading
        return dataclasses.replace(self, device=device, dtype=dtype)


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise InputError(f"{name} {value!r} is not supported; choose one of {allowed}")


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
