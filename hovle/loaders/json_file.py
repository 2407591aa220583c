"""The checkpoint's small JSON files (config, tokenizer config, added tokens, shard index), read one way."""

from __future__ import annotations

import json
from pathlib import Path


def read_json(file: Path, error: type[Exception]) -> dict:
    """A checkpoint's JSON file as an object; `error` (naming the file) if unreadable, invalid or not an object."""
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{file}: cannot be read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise error(f"{file}: expected a JSON object, got {type(raw).__name__}")
    return raw
