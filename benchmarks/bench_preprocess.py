"""Image preprocessing speed: the Python path (PIL resize + torch normalise) against the native C++ path, and on a
GPU the CUDA path, side by side in one run.

Both CPU providers go through hovle.loaders.image.preprocess on the same uint8 numpy array (preprocess="python" /
"native"), so each includes everything from decoded pixels to the (n, 3, 448, 448) float32 tensor: the Python path
its PIL round trip, resize, crops and tensor conversion; the native path the tiling decision and the fused pass
(threads: every CPU this process may use). The CUDA row times hovle.kernels.preprocess.preprocess_tiles
on "cuda", including the host-to-device copy of the uint8 image, synchronised. Speeds: input megapixels/s and
output GB/s (bytes written), medians over --repeats after warm-up. The 1-minute load average is recorded: on a
shared machine other processes skew these numbers.

Rows go to benchmarks/results/preprocess.jsonl. Run: python benchmarks/bench_preprocess.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_rows, provenance  # noqa: E402
from hovle.kernels import preprocess as kp  # noqa: E402
from hovle.loaders.image import choose_grid, preprocess  # noqa: E402

SIZES = [(4032, 3024), (1024, 768)]
MAX_NUMS = [1, 6, 12]


def photo(w: int, h: int) -> np.ndarray:
    """Photo-like: smooth gradients plus noise, (h, w, 3) uint8."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 200, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 200, h, dtype=np.float32)[:, None]
    base = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)  # (h, w, 3)
    return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def median_ms(fn, repeats: int, warmup: int = 2, sync: bool = False) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def providers(img: np.ndarray, max_num: int) -> dict:
    out = {"python": (lambda: preprocess(img, max_num=max_num, preprocess="python"), False)}
    if kp.native_available():
        out["native-cpu"] = (lambda: preprocess(img, max_num=max_num, preprocess="native"), False)
    if kp.cuda_available():
        grid = choose_grid(img.shape[1], img.shape[0], min_num=1, max_num=max_num, image_size=448)
        out["native-cuda"] = (lambda: kp.preprocess_tiles(img, grid, 448, True, device="cuda"), True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--record", action="store_true", help="append the rows to benchmarks/results/preprocess.jsonl")
    args = ap.parse_args()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # native default
    print(f"preprocessing paths: {kp.describe()}")
    rows, prov = [], provenance()
    for w, h in SIZES:
        img = photo(w, h)
        for max_num in MAX_NUMS:
            tiles = preprocess(img, max_num=max_num, preprocess="python").num_tiles
            base = None
            for name, (fn, sync) in providers(img, max_num).items():
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                ms = median_ms(fn, args.repeats, sync=sync)
                base = base or ms
                row = {
                    "op": "preprocess",
                    "shape": f"{w}x{h}",
                    "max_num": max_num,
                    "tiles": tiles,
                    "dtype": "float32",
                    "provider": name,
                    "ms": ms,
                    "mpix_per_s": w * h / ms / 1e3,
                    "out_gbps": tiles * 3 * 448 * 448 * 4 / ms / 1e6,
                    "speedup_vs_python": base / ms,
                    "native_threads": threads if name == "native-cpu" else None,
                    "torch_threads": torch.get_num_threads(),
                    "cpu": cpu_name(),
                    "cpus": os.cpu_count(),
                    "load_avg_1m": load,
                    **prov,
                }
                rows.append(row)
    if args.record:
        append_rows(rows, "preprocess.jsonl")
    print(f"\n{'image':>10} {'max_num':>7} {'tiles':>5} {'provider':>12} {'ms':>9} {'MPix/s':>8} {'x python':>8}")
    for r in rows:
        print(
            f"{r['shape']:>10} {r['max_num']:>7} {r['tiles']:>5} {r['provider']:>12} {r['ms']:>9.2f} "
            f"{r['mpix_per_s']:>8.1f} {r['speedup_vs_python']:>8.2f}"
        )
    print(f"device {prov['device']}, torch {prov['torch']}, commit {prov['commit']}, {prov['date']}")


if __name__ == "__main__":
    main()
