"""Write a checkpoint directory in the released HF layout: config.json, F32 safetensors shards, index, extras.

Tensors may come from an iterator; they are buffered one shard at a time (greedy fill in insertion order, as HF's
`shard_checkpoint` does), so writing a ~10 GB checkpoint needs about one shard of memory. Everything is written
into a temporary sibling directory that is renamed into place at the end; on any failure it is removed, so a
half-written checkpoint never appears under `dst_dir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import WeightsError
from ..loaders.weights import INDEX_FILE, SINGLE_FILE

GENERATION_CONFIG_FILE = "generation_config.json"
GENERATION_CONFIG = {"_from_model_config": True, "transformers_version": "4.37.2"}
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # HF's max_shard_size="5GB" (decimal), as the release was written


def shard_name(index: int, count: int) -> str:
    """HF shard file name, 1-based: model-00001-of-00003.safetensors."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def _items(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> Iterator:
    return iter(tensors.items()) if isinstance(tensors, Mapping) else iter(tensors)


def _as_f32(name: str, tensor: object, seen_ptrs: set[int]) -> torch.Tensor:
    """Contiguous CPU float32 that owns its storage (safetensors refuses tensors that share memory)."""
    if not isinstance(tensor, torch.Tensor) or tensor.is_complex():
        raise WeightsError(f"tensor {name!r}: expected a real torch.Tensor, got {type(tensor).__name__}")
    out = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
    shares = out.untyped_storage().nbytes() != out.nbytes or out.data_ptr() in seen_ptrs
    if shares and out.nbytes:
        out = out.clone()
    seen_ptrs.add(out.data_ptr())
    return out


def _flush(tmp: Path, shard: dict[str, torch.Tensor], number: int) -> tuple[Path, list[str]]:
    part = tmp / f"shard-{number:05d}.part"  # renamed once the shard count is known
    save_file(shard, str(part), metadata={"format": "pt"})
    return part, list(shard)


def _write_shards(tmp: Path, items: Iterator, max_bytes: int, single_file: bool) -> tuple[dict[str, str], int]:
    """Stream tensors into shards; returns (weight_map name -> file name, total bytes)."""
    parts: list[tuple[Path, list[str]]] = []
    shard: dict[str, torch.Tensor] = {}
    names: set[str] = set()
    ptrs: set[int] = set()
    size = total = 0
    for name, tensor in items:
        if name in names:
            raise WeightsError(f"tensor {name!r}: given twice")
        names.add(name)
        t = _as_f32(name, tensor, ptrs)
        if shard and size + t.nbytes > max_bytes and not single_file:
            parts.append(_flush(tmp, shard, len(parts)))
            shard, size, ptrs = {}, 0, {t.data_ptr()}
        shard[name] = t
        size, total = size + t.nbytes, total + t.nbytes
    if not shard:
        raise WeightsError(f"{tmp}: no tensors to write")
    parts.append(_flush(tmp, shard, len(parts)))
    return _name_shards(tmp, parts, single_file), total


def _name_shards(tmp: Path, parts: list[tuple[Path, list[str]]], single_file: bool) -> dict[str, str]:
    """Give the finished parts their final names (the count is only known now); returns name -> file."""
    mode = (tmp / "config.json").stat().st_mode & 0o777  # save_file makes 0600 files; use the umask's mode
    weight_map = {}
    for number, (part, shard_names) in enumerate(parts, start=1):
        fname = SINGLE_FILE if single_file else shard_name(number, len(parts))
        part.rename(tmp / fname)
        os.chmod(tmp / fname, mode)
        weight_map.update(dict.fromkeys(shard_names, fname))
    return weight_map


def _write_json(file: Path, obj: object, sort_keys: bool = False) -> None:
    file.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")


def _write_extra(tmp: Path, extra_files: Mapping[str, bytes | str], taken: set[str]) -> None:
    for fname, content in extra_files.items():
        if Path(fname).name != fname or fname in ("", ".", "..") or fname in taken:
            raise WeightsError(f"extra file {fname!r}: expected a plain file name not used by the checkpoint itself")
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        (tmp / fname).write_bytes(data)


def _sibling_dir(dst: Path, suffix: str) -> Path:
    path = dst.parent / f".{dst.name}.{uuid.uuid4().hex[:12]}{suffix}"
    path.mkdir()  # unlike mkdtemp (0700), honours the umask, so the renamed checkpoint is readable as usual
    return path


def _check_destination(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise WeightsError(f"{dst}: exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise WeightsError(f"{dst}: directory exists and is not empty; pass overwrite=True to replace it")


def _move_into_place(tmp: Path, dst: Path, overwrite: bool) -> None:
    _check_destination(dst, overwrite)
    if not dst.exists():
        os.rename(tmp, dst)
        return
    old = _sibling_dir(dst, ".old")
    os.rename(dst, old / "ckpt")  # keep the old one until the new one is in place
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old / "ckpt", dst)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(
    dst_dir: str | Path,
    config_dict: dict,
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    extra_files: Mapping[str, bytes | str] | None = None,
    overwrite: bool = False,
    single_file: bool = False,
) -> Path:
    """Write `dst_dir` atomically and return it.

    config_dict: written as config.json (indent 2, key order kept).
    tensors: dict or iterable of (name, tensor); stored as contiguous float32 in insertion order.
    max_shard_bytes: a shard is closed before a tensor that would push it past this (a lone bigger tensor
        still gets its own shard). Shards are model-0000i-of-0000N.safetensors plus model.safetensors.index.json.
    extra_files: file name -> content (tokenizer files, ...); may replace generation_config.json.
    overwrite: replace a non-empty `dst_dir` instead of raising WeightsError.
    single_file: write one model.safetensors and no index (the other form the loader accepts).
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes={max_shard_bytes}: expected a positive byte count")
    dst = Path(dst_dir)
    with atomic_folder(dst, overwrite) as tmp:
        _write_json(tmp / "config.json", config_dict)
        weight_map, total = _write_shards(tmp, _items(tensors), max_shard_bytes, single_file)
        if not single_file:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            _write_json(tmp / INDEX_FILE, index, sort_keys=True)
        _write_json(tmp / GENERATION_CONFIG_FILE, GENERATION_CONFIG)
        taken = {"config.json", INDEX_FILE, *weight_map.values()}
        _write_extra(tmp, extra_files or {}, taken)
    return dst


@contextlib.contextmanager
def atomic_folder(dst: Path, overwrite: bool) -> Iterator[Path]:
    """A sibling temporary folder to fill: renamed into place as `dst` when the block ends (an existing non-empty
    `dst` is replaced only with overwrite, and kept until the new one is in place), removed if the block raises."""
    _check_destination(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling_dir(dst, ".tmp")
    try:
        yield tmp
        _move_into_place(tmp, dst, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
