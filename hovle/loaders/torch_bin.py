"""PyTorch pickle checkpoints (`pytorch_model.bin`, or shards with `pytorch_model.bin.index.json`), read safely.

Each file is opened with `torch.load(weights_only=True, mmap=True)`: the unpickler accepts only tensors, their
storages and plain containers (a file that needs any other global is refused, naming the file and the global), and
the storages stay memory-mapped, so listing names and shapes reads no tensor data and loading copies one tensor
at a time. The result has the shape of a safetensors header (hovle/loaders/weights.py's TensorInfo) so the strict
name and shape checks are the same for both formats.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..errors import WeightsError
from .json_file import read_json

BIN_INDEX_FILE = "pytorch_model.bin.index.json"
BIN_SINGLE_FILE = "pytorch_model.bin"
DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def bin_files(root: Path) -> tuple[list[Path], dict[str, Path] | None] | None:
    """The pickle files of a folder and the index's weight_map, or None when it has neither form."""
    if (root / BIN_INDEX_FILE).is_file():
        weight_map = read_json(root / BIN_INDEX_FILE, WeightsError).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{root / BIN_INDEX_FILE}: expected a non-empty 'weight_map' of tensor name -> file")
        out = {}
        for name, fname in weight_map.items():
            if not isinstance(fname, str) or Path(fname).name != fname or fname in ("", ".", ".."):
                raise WeightsError(f"{root / BIN_INDEX_FILE}: tensor {name!r} maps to {fname!r}; expected a file name")
            out[name] = root / fname
            if not out[name].is_file():
                raise WeightsError(f"{root / BIN_INDEX_FILE}: tensor {name!r} maps to {out[name]}, which is missing")
        return sorted(set(out.values())), out
    if (root / BIN_SINGLE_FILE).is_file():
        return [root / BIN_SINGLE_FILE], None
    return None


def open_bin(file: Path) -> dict[str, torch.Tensor]:
    """The file's state dict, memory-mapped (read whole for the legacy pre-zip format); WeightsError for anything
    but a flat dict of float tensors."""
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(file, map_location="cpu", weights_only=True)  # the legacy (pre-zip) format
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{file}: refused: it needs more than tensors to unpickle ({first}); only weights_only files are read"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise WeightsError(f"{file}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{file}: expected a dict of tensor name -> tensor, got {type(state).__name__}")
    for name, t in state.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise WeightsError(f"{file}: entry {name!r} is a {type(t).__name__}; expected named tensors only")
        if t.dtype not in DTYPE_NAMES:
            raise WeightsError(f"tensor {name!r} in {file}: dtype {t.dtype}; expected one of float32/float16/bfloat16")
    return state


def bin_header(file: Path) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """name -> (dtype name, shape, 0, byte count) of each tensor: the fields of a safetensors header entry."""
    return {
        name: (DTYPE_NAMES[t.dtype], tuple(t.shape), 0, t.numel() * t.element_size())
        for name, t in open_bin(file).items()
    }
