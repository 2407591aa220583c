"""HoVLE / HoVLE-HD inference engine: loads the released safetensors directly, no trust_remote_code."""

from .engine import Engine, Stream
from .errors import ConfigError, HoVLEError, ImageError, InputError, TokenizerError, WeightsError
from .generation import GenerationResult, SamplingParams, Timings
from .loaders.config import HoVLEConfig

__all__ = [
    "ConfigError",
    "Engine",
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
