"""Checkpoints: strict validation against a family's expected layout, streaming load.

Safetensors (model.safetensors or shards with their index) is the native form; PyTorch pickle files
(pytorch_model.bin or shards with their index, the form some releases ship) are read through
hovle/loaders/torch_bin.py with the same checks. Safetensors wins when a folder holds both.

Every shard header (8-byte little-endian length, then JSON) is checked against the layout the model family derives
from config.json (names and shapes: hovle/families/<family>/weights.py) before any tensor byte is read, so a
truncated last shard fails at once, not after gigabytes of reads. Loading goes shard by shard through memory-mapped
`safe_open`, one tensor at a time: two full copies of the model never coexist.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import WeightsError
from ..progress import ProgressBar
from .json_file import read_json
from .safetensors_header import TensorInfo, read_header
from .torch_bin import bin_files, bin_header, open_bin

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PROGRESS_AUTO_BYTES = 1 << 30
_SHOWN = 10  # names listed in one error message before "... and N more"


def _read_index(index: Path) -> dict[str, Path]:
    """weight_map of the index as tensor name -> shard path; every named shard must exist."""
    weight_map = read_json(index, WeightsError).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsError(f"{index}: expected an object with a non-empty 'weight_map' of tensor name -> file")
    out = {}
    for name, fname in weight_map.items():
        if not isinstance(fname, str) or Path(fname).name != fname or fname in ("", ".", ".."):
            raise WeightsError(f"{index}: weight_map maps tensor {name!r} to {fname!r}; expected a plain file name")
        out[name] = index.parent / fname
        if not out[name].is_file():
            raise WeightsError(f"{index}: weight_map maps tensor {name!r} to {out[name]}, which does not exist")
    return out


def _locate(path: str | Path) -> tuple[list[Path], dict[str, Path] | None]:
    root = Path(path)
    if (root / INDEX_FILE).is_file():
        weight_map = _read_index(root / INDEX_FILE)
        return sorted(set(weight_map.values())), weight_map
    if (root / SINGLE_FILE).is_file():
        return [root / SINGLE_FILE], None
    pickled = bin_files(root)
    if pickled is not None:
        return pickled
    raise WeightsError(
        f"{root}: no {INDEX_FILE}, {SINGLE_FILE}, pytorch_model.bin.index.json or pytorch_model.bin found "
        "(is this a checkpoint directory?)"
    )


def _is_pickle(file: Path) -> bool:
    return file.suffix == ".bin"


def _bin_header(file: Path) -> dict[str, TensorInfo]:
    """A pickle file's tensors as TensorInfo (begin 0, end the byte count: the data is not located)."""
    return {n: TensorInfo(n, file, *entry) for n, entry in bin_header(file).items()}


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: the shards its index names, or model.safetensors."""
    return _locate(path)[0]


def _check_index(found: dict[str, TensorInfo], weight_map: dict[str, Path], index: Path) -> None:
    for name, file in weight_map.items():
        if name not in found or found[name].file != file:
            raise WeightsError(f"{index}: weight_map puts tensor {name!r} in {file}, but that file's header lacks it")
    for name, info in found.items():
        if name not in weight_map:
            raise WeightsError(f"tensor {name!r} in {info.file} is not listed in the weight_map of {index}")


def _listing(items: list[str]) -> str:
    return "; ".join(items[:_SHOWN]) + (f" ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _check_names(found: dict[str, TensorInfo], expected: dict[str, tuple[int, ...]], files: list[Path]) -> None:
    missing = [name for name in expected if name not in found]
    if missing:
        searched = ", ".join(str(f) for f in files)
        raise WeightsError(f"{len(missing)} tensor(s) missing: {_listing(missing)} (searched {searched})")
    unexpected = [f"{name!r} in {info.file}" for name, info in found.items() if name not in expected]
    if unexpected:
        raise WeightsError(f"{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}")
    wrong = [
        f"{name!r} in {info.file}: shape {list(info.shape)}, expected {list(expected[name])}"
        for name, info in found.items()
        if info.shape != expected[name]
    ]
    if wrong:
        raise WeightsError(f"{len(wrong)} tensor(s) with the wrong shape: {_listing(wrong)}")


def validate_checkpoint(
    path: str | Path, expected: dict[str, tuple[int, ...]], rename=None, ignored=None
) -> dict[str, TensorInfo]:
    """Check every shard header and the name/shape set against `expected`; reads no tensor data. rename: the
    checkpoint's name -> ours (e.g. an optional prefix dropped); ignored(name): a name that may be present and is
    never read (buffers such as rotary_emb.inv_freq). Returns our names -> TensorInfo (its name: the file's)."""
    files, weight_map = _locate(path)
    found: dict[str, TensorInfo] = {}
    for file in files:
        for name, info in (_bin_header(file) if _is_pickle(file) else read_header(file)).items():
            if name in found:
                raise WeightsError(f"tensor {name!r} appears in both {found[name].file} and {file}")
            found[name] = info
    if weight_map is not None:
        index = INDEX_FILE if not _is_pickle(files[0]) else "pytorch_model.bin.index.json"
        _check_index(found, weight_map, Path(path) / index)
    ours = {}
    for name, info in found.items():
        if ignored is not None and ignored(name):
            continue
        key = rename(name) if rename is not None else name
        if key in ours:
            raise WeightsError(f"tensors {ours[key].name!r} and {name!r} both stand for {key!r}")
        ours[key] = info
    _check_names(ours, expected, files)
    return ours


def checkpoint_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape by its name in the checkpoint, from the headers alone (families that derive sizes from
    the weights read them here before the strict check)."""
    files, _ = _locate(Path(path).expanduser())
    return {
        name: info.shape for f in files for name, info in (_bin_header(f) if _is_pickle(f) else read_header(f)).items()
    }


def _to_target(t: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    """One tensor to the run dtype on the target device. On a GPU the copy goes first and the cast runs there
    (same round-to-nearest-even, much faster than a CPU cast); only this one tensor is ever held in both forms."""
    if torch.device(device).type == "cuda":
        return t.to(device=device).to(dtype=dtype)
    return t.to(device=device, dtype=dtype)


def _load_file(file: Path, infos: dict[str, TensorInfo], out: dict, dtype, device, bar: ProgressBar | None) -> None:
    """Our names -> infos of one file, read in file order (sequential reads of the mapping) into `out`."""
    current = None
    try:
        with contextlib.ExitStack() as stack:
            if _is_pickle(file):
                get = open_bin(file).__getitem__
            else:
                get = stack.enter_context(safe_open(str(file), framework="pt", device="cpu")).get_tensor
            for key, info in sorted(infos.items(), key=lambda kv: kv[1].begin):
                current = info.name
                out[key] = _finite(info, _to_target(get(info.name), dtype, device), dtype)
                if bar is not None:
                    bar.update(info.nbytes)
    except Exception as exc:
        if isinstance(exc, WeightsError):
            raise
        what = f"reading tensor {current!r}" if current else "opening the file"
        raise WeightsError(f"{file}: {what} failed: {type(exc).__name__}: {exc}") from exc


def _finite(info: TensorInfo, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A weight with NaN or inf would turn every answer into garbage (or id 0): refused at load, by name."""
    if not bool(torch.isfinite(t).all()):
        raise WeightsError(
            f"tensor {info.name!r} in {info.file}: {int((~torch.isfinite(t)).sum())} of {t.numel()} "
            f"values are NaN or inf (in the file, or out of {dtype}'s range after the cast)"
        )
    return t


def load_weights(
    path: str | Path,
    expected: dict[str, tuple[int, ...]],
    unused: frozenset[str] = frozenset(),
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    rename=None,
    ignored=None,
) -> dict[str, torch.Tensor]:
    """Validate every shard against `expected` (name -> shape), then read every tensor but the `unused` ones (checked
    in the headers, never read), cast to `dtype` on `device`. rename, ignored: as validate_checkpoint.

    progress: None shows a bar on stderr when more than 1 GiB is read and stderr is a TTY; True/False force it.
    With dtype float32 on the CPU the tensors stay zero-copy views of the shards' private (copy-on-write) mappings:
    replace checkpoint files by rename (as write_checkpoint does), never truncate them in place while loaded.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype={dtype!r}: expected a floating-point torch.dtype")
    infos = validate_checkpoint(path, expected, rename, ignored)
    wanted = {key: info for key, info in infos.items() if key not in unused}
    total = sum(info.nbytes for info in wanted.values())
    show = progress if progress is not None else total > PROGRESS_AUTO_BYTES and sys.stderr.isatty()
    bar = ProgressBar(total) if show else None
    out: dict[str, torch.Tensor] = {}
    try:
        for file in dict.fromkeys(info.file for info in wanted.values()):
            _load_file(file, {k: i for k, i in wanted.items() if i.file == file}, out, dtype, device, bar)
    except BaseException:
        out.clear()  # drop what was read so far: nothing half-built escapes
        raise
    finally:
        if bar is not None:
            bar.close()
    return out
