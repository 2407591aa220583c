"""HoVLE / HoVLE-HD inference engine: loads the released safetensors directly, no trust_remote_code.

`from hovle import Engine` is the entry point. The names below are loaded on first use, so that importing one
piece (`hovle.kernels`, the independent `hovle.reference`) does not import the whole engine.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_EXPORTS = {
    "Engine": ".engine",
    "Stream": ".handles",
    "Handle": ".handles",
    "ConfigError": ".errors",
    "HoVLEError": ".errors",
    "ImageError": ".errors",
    "InputError": ".errors",
    "TokenizerError": ".errors",
    "WeightsError": ".errors",
    "GenerationResult": ".generation",
    "SamplingParams": ".generation",
    "Timings": ".generation",
    "HoVLEConfig": ".families.hovle.config",
}
__all__ = [
    "ConfigError",
    "Engine",
    "Handle",
    "GenerationResult",
    "HoVLEConfig",
    "HoVLEError",
    "ImageError",
    "InputError",
    "SamplingParams",
    "Stream",
    "Timings",
    "TokenizerError",
    "WeightsError",
]

if TYPE_CHECKING:
    from .engine import Engine
    from .errors import ConfigError, HoVLEError, ImageError, InputError, TokenizerError, WeightsError
    from .families.hovle.config import HoVLEConfig
    from .generation import GenerationResult, SamplingParams, Timings
    from .handles import Handle, Stream


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hovle' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
