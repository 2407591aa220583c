"""`python -m hovle convert`: a checkpoint folder's PyTorch pickle shards rewritten once as safetensors.

Each pickle file is read with weights_only (hovle/loaders/torch_bin.py) and written as one safetensors shard of the
same tensors in the same dtypes (bf16 stays bf16), with model.safetensors.index.json; every other file of the folder
(config, tokenizer, generation config, the authors' code) is copied as is. The new folder appears atomically, and
loads faster (no unpickling; zero-copy memory mapping) with the same strict checks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

from ..errors import WeightsError
from .torch_bin import BIN_INDEX_FILE, bin_files, open_bin


def to_safetensors(src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    """Writes `dst` from the pickle checkpoint `src` (see the module docstring); returns dst."""
    from ..default_model.checkpoint import atomic_folder

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    found = bin_files(src)
    if found is None:
        raise WeightsError(f"{src}: no pytorch_model.bin or {BIN_INDEX_FILE} to convert")
    if dst.resolve() == src.resolve():
        raise WeightsError(f"{dst}: the output folder must differ from the input folder")
    files, _ = found
    with atomic_folder(dst, overwrite) as tmp:
        weight_map, total = {}, 0
        for i, file in enumerate(files):
            name = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
            state = {k: t.contiguous().clone() for k, t in open_bin(file).items()}  # owned, unshared storages
            save_file(state, str(tmp / name), metadata={"format": "pt"})
            weight_map |= dict.fromkeys(state, name)
            total += sum(t.numel() * t.element_size() for t in state.values())
            del state
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        skipped = {f.name for f in files} | {BIN_INDEX_FILE}
        for item in src.iterdir():
            if item.is_file() and item.name not in skipped:
                shutil.copy2(item, tmp / item.name)
    return dst
