"""What config.json files have in common across model families: typed reading with errors that name the file, the
key and the expectation, and the two blocks every family's decoder stacks are built from (rotary embedding, one
stack of InternLM2-style layers). Each family reads its own layout (hovle/families/<family>/config.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .json_file import read_json


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one stack: rotate-half RoPE with optional linear or dynamic-NTK scaling."""

    theta: float
    head_dim: int
    max_position_embeddings: int
    scaling: str | None = None  # None, "linear" or "dynamic"
    factor: float = 1.0


@dataclass(frozen=True)
class StackConfig:
    """One stack of InternLM2 decoder layers (the 8 embedding layers or the 24 LLM layers)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope: RopeConfig

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def qkv_size(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim


class ConfigReader:
    """Typed access to one JSON object, with errors that name the file, the key and the expected type."""

    _MISSING = object()

    def __init__(self, raw: Any, source: str):
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        self.raw, self.source = raw, source

    def get(self, key: str, kind: type, default: Any = _MISSING) -> Any:
        if key not in self.raw or (self.raw[key] is None and default is not self._MISSING):
            if default is self._MISSING:
                raise ConfigError(f"{self.source}: missing key {key!r} ({kind.__name__} expected)")
            return default
        value = self.raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{self.source}: {key!r} = {value!r}; expected {kind.__name__}")
        return value

    def require(self, key: str, allowed: tuple, default: Any = _MISSING) -> Any:
        value = self.raw.get(key, default) if default is not self._MISSING else self.get(key, object)
        if value not in allowed:
            raise ConfigError(f"{self.source}: {key!r} = {value!r} is not supported; supported: {allowed}")
        return value

    def positive(self, key: str, kind: type = int, default: Any = _MISSING) -> Any:
        value = self.get(key, kind, default)
        if not value > 0:
            raise ConfigError(f"{self.source}: {key!r} = {value!r}; expected a positive {kind.__name__}")
        return value


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint folder as a dict (ConfigError when it is missing or not a JSON object)."""
    file = Path(path).expanduser() / "config.json"
    if not file.is_file():
        raise ConfigError(f"{file}: not found; expected the checkpoint's config.json")
    raw = read_json(file, ConfigError)
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a JSON object, got {type(raw).__name__}")
    return raw


def rope_config(r: ConfigReader, head_dim: int) -> RopeConfig:
    scaling = r.get("rope_scaling", dict, default=None)
    kind, factor = None, 1.0
    if scaling is not None:
        s = ConfigReader(scaling, f"{r.source}:rope_scaling")
        kind = scaling.get("type", scaling.get("rope_type"))
        if kind not in ("linear", "dynamic"):
            raise ConfigError(f"{s.source}: type {kind!r} is not supported; supported: ('linear', 'dynamic')")
        factor = s.get("factor", float)
        if not (math.isfinite(factor) and factor >= 1.0):
            raise ConfigError(f"{s.source}: factor {factor!r}; expected a float >= 1")
    return RopeConfig(
        theta=r.positive("rope_theta", float, default=10000.0),
        head_dim=head_dim,
        max_position_embeddings=r.positive("max_position_embeddings", int, default=2048),
        scaling=kind,
        factor=factor,
    )


def stack_config(r: ConfigReader, layers_default: Any = ConfigReader._MISSING) -> StackConfig:
    r.require("hidden_act", ("silu",), default="silu")
    hidden = r.positive("hidden_size")
    heads = r.positive("num_attention_heads")
    kv_heads = r.positive("num_key_value_heads", int, default=heads)
    if hidden % heads or heads % kv_heads or (hidden // heads) % 2:
        raise ConfigError(
            f"{r.source}: hidden_size {hidden}, num_attention_heads {heads}, num_key_value_heads {kv_heads}: "
            "expected heads to divide hidden_size into an even head_dim and kv heads to divide heads"
        )
    eps = r.positive("rms_norm_eps", float, default=1e-6)
    return StackConfig(
        hidden_size=hidden,
        intermediate_size=r.positive("intermediate_size"),
        num_layers=r.positive("num_hidden_layers", int, layers_default),
        num_heads=heads,
        num_kv_heads=kv_heads,
        rms_norm_eps=eps,
        rope=rope_config(r, hidden // heads),
    )
