"""Error types raised by the engine.

Every error names what was wrong and what was expected. They derive from ValueError (bad input) or
OSError (unreadable files) as well, so callers that catch the builtin families keep working.
"""


class HoVLEError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(HoVLEError, ValueError):
    """config.json is missing a key, has a value of the wrong type, or one the engine does not support."""


class WeightsError(HoVLEError, ValueError):
    """A checkpoint file is missing, truncated or corrupt, or a tensor is missing, unexpected or mis-shaped."""


class TokenizerError(HoVLEError, ValueError):
    """Tokenizer files are missing or inconsistent with each other or with config.json."""


class ImageError(HoVLEError, ValueError):
    """An image cannot be read, is empty or absurdly large, or has an unsupported layout."""


class InputError(HoVLEError, ValueError):
    """A request is invalid: prompt too long, image/placeholder mismatch, bad sampling parameters."""


class Overloaded(HoVLEError):
    """The engine's waiting queue is full (an HTTP server answers 503)."""


class EngineClosed(HoVLEError):
    """The engine was closed before the request finished."""


class NumericsError(HoVLEError, ArithmeticError):
    """The model produced non-finite logits (a numerical blow-up, not a bad request)."""
