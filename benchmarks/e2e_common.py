"""What bench_e2e's providers share: where they run (the GPU, or the CPU in --smoke mode), the scenarios, the test
image, memory bookkeeping and the full-size checkpoint writer."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import measured_peaks  # noqa: E402
from hovle.default_model.checkpoint import write_checkpoint  # noqa: E402
from hovle.default_model.folder import bundled_tokenizer, config_dict, random_tensors  # noqa: E402
from hovle.families.hovle.config import HoVLEConfig  # noqa: E402

TEXT_PROMPT = "Summarise the main ideas of modern inference engines for vision-language models in a few sentences."
SCENARIOS = {"text": (None, 1), "one_tile": ((448, 448), 1), "max12": ((1792, 1344), 12)}


class Run:
    """Where the benchmark runs: the GPU for real measurements, or the CPU in --smoke mode (the same code paths on
    the tiny default checkpoint, in fp32 with the torch backend, nothing written) to check the script itself."""

    device, dtype, backend, compile_mode = "cuda", torch.bfloat16, "triton", "reduce-overhead"

    @classmethod
    def smoke(cls) -> None:
        cls.device, cls.dtype, cls.backend, cls.compile_mode = "cpu", torch.float32, "torch", None

    @classmethod
    def on_gpu(cls) -> bool:
        return cls.device == "cuda"


def sync() -> None:
    if Run.on_gpu():
        torch.cuda.synchronize()


def reset_memory() -> None:
    if Run.on_gpu():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if Run.on_gpu() else None


def copy_gbps() -> float | None:
    return measured_peaks()["copy_gbps"] if Run.on_gpu() else None


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1) + rng.integers(0, 40, (height, width, 3))
    return Image.fromarray((img % 256).astype(np.uint8))


def write_full_checkpoints(root: Path) -> dict[str, Path]:
    """HoVLE (written once: real sizes, random F32 weights, ~10.4 GB) and HoVLE-HD (its shards linked, its own
    config.json)."""
    paths = {"hovle": root / "hovle", "hovle-hd": root / "hovle-hd"}
    if not (paths["hovle"] / "config.json").is_file():
        tok, files = bundled_tokenizer()
        raw = config_dict("hovle", img_context_token_id=tok.img_context_id)
        t0 = time.perf_counter()
        write_checkpoint(
            paths["hovle"], raw, random_tensors(HoVLEConfig.from_dict(raw)), extra_files=files, overwrite=True
        )
        print(f"wrote {paths['hovle']} in {time.perf_counter() - t0:.0f} s", flush=True)
    hd = paths["hovle-hd"]
    if not (hd / "config.json").is_file():
        hd.mkdir(parents=True, exist_ok=True)
        for f in paths["hovle"].iterdir():
            if f.name != "config.json" and not (hd / f.name).exists():
                (hd / f.name).symlink_to(f.resolve())
        raw = json.loads((paths["hovle"] / "config.json").read_text())
        raw["embedding_config"]["pixel_shuffle_loc"] = "post"
        (hd / "config.json").write_text(json.dumps(raw, indent=2))
    return paths


def write_tiny_checkpoints(root: Path) -> dict[str, Path]:
    """The rehearsal's stand-in for write_full_checkpoints: the embedded default models, copied."""
    from hovle.default_model.folder import copy_default_model

    return {v: copy_default_model(root / v, v, overwrite=True) for v in ("hovle", "hovle-hd")}


if __name__ == "__main__":  # python benchmarks/e2e_common.py --write DIR [--tiny]: the checkpoints alone
    if sys.argv[1:2] != ["--write"] or len(sys.argv) not in (3, 4) or sys.argv[3:] not in ([], ["--tiny"]):
        sys.exit("usage: python benchmarks/e2e_common.py --write DIR [--tiny]")
    t0 = time.perf_counter()
    written = (write_tiny_checkpoints if sys.argv[3:] else write_full_checkpoints)(Path(sys.argv[2]))
    print(f"checkpoints ready in {time.perf_counter() - t0:.0f} s: {written}", flush=True)
