"""One safetensors file's header (8-byte little-endian length, then JSON), parsed and checked without touching
tensor data: dtypes, shapes against byte extents, extents within the file and not overlapping."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsError

ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own cap; the real shards' headers are a few kB


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its shard header describes it; begin/end are absolute byte offsets in `file`."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _read_raw_header(file: Path, size: int) -> tuple[dict, int]:
    try:
        with open(file, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n > MAX_HEADER_BYTES or 8 + n > size:  # also catches files shorter than the 8-byte length
                limit = f"at most {MAX_HEADER_BYTES} and within the file"
                raise WeightsError(f"{file}: corrupt or TRUNCATED header: length {n} bytes ({limit}, {size} bytes)")
            raw = fh.read(n)
    except OSError as exc:
        raise WeightsError(f"{file}: cannot be read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{file}: corrupt header, not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{file}: corrupt header, expected a JSON object, got {type(header).__name__}")
    header.pop("__metadata__", None)
    return header, 8 + n


def _is_int_list(x: object, length: int | None = None) -> bool:
    ok = isinstance(x, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in x)
    return ok and (length is None or len(x) == length)


def _tensor_info(name: str, entry: object, file: Path, data_start: int) -> TensorInfo:
    ok = isinstance(entry, dict) and _is_int_list(entry.get("shape")) and _is_int_list(entry.get("data_offsets"), 2)
    if not ok:
        raise WeightsError(f"{file}: corrupt header entry for tensor {name!r}: {entry!r}")
    dtype, shape, (begin, end) = entry.get("dtype"), tuple(entry["shape"]), entry["data_offsets"]
    if dtype not in ITEMSIZE:
        raise WeightsError(f"tensor {name!r} in {file}: dtype {dtype!r}; expected one of {sorted(ITEMSIZE)}")
    nbytes = math.prod(shape) * ITEMSIZE[dtype]
    if end - begin != nbytes:
        raise WeightsError(
            f"tensor {name!r} in {file}: data_offsets [{begin}, {end}] span {end - begin} bytes, but shape "
            f"{list(shape)} x {dtype} needs {nbytes}"
        )
    return TensorInfo(name, file, dtype, shape, data_start + begin, data_start + end)


def _check_extents(infos: list[TensorInfo], file: Path, size: int) -> None:
    prev = None
    for info in sorted(infos, key=lambda i: (i.begin, i.end)):
        if info.end > size:
            raise WeightsError(
                f"tensor {info.name!r} in {file}: TRUNCATED: its data ends at byte {info.end}, file has {size} bytes"
            )
        if prev is not None and info.begin < prev.end:
            raise WeightsError(f"{file}: data of tensors {prev.name!r} and {info.name!r} overlap")
        prev = info if info.nbytes else prev


def read_header(file: str | Path) -> dict[str, TensorInfo]:
    """Parse and check one shard's header without touching tensor data."""
    file = Path(file)
    if not file.is_file():
        raise WeightsError(f"{file}: not found or not a regular file")
    size = os.stat(file).st_size
    header, data_start = _read_raw_header(file, size)
    infos = {name: _tensor_info(name, entry, file, data_start) for name, entry in header.items()}
    _check_extents(list(infos.values()), file, size)
    return infos
