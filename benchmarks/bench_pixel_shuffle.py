"""pixel_shuffle (HoVLE-HD's shuffle after the embedding layers): Triton vs torch eager (reshape + permute copy)
and torch.compile of it, at the model's shapes.

Bytes per call: read (N, 1024, 2048) + write (N, 256, 8192) (the same count for every provider).
"""

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_device, bench_dtype, compiled, kernel_script, no_gpu, sizes, time_providers  # noqa: E402
from hovle.kernels.pixel_shuffle import pixel_shuffle, pixel_shuffle_ref  # noqa: E402

GRID, HIDDEN = sizes((32, 2048), (4, 64))  # 448 px tiles of 14 px patches; the embedding width
TILES = sizes([1, 13], [2])  # one tile; 12 tiles + thumbnail (max_num=12)


def run() -> list[dict]:
    if no_gpu("bench_pixel_shuffle"):
        return []
    rows, dtype = [], bench_dtype()
    providers = {"triton": pixel_shuffle, "torch": pixel_shuffle_ref, "torch_compile": compiled(pixel_shuffle_ref)}
    for n in TILES:
        x = torch.randn(n, GRID * GRID, HIDDEN, device=bench_device(), dtype=dtype)
        nbytes = 2 * x.numel() * x.element_size()
        shape = f"N={n} P={GRID * GRID} C={HIDDEN}"
        rows += time_providers("pixel_shuffle", shape, dtype, providers, (x, GRID), nbytes=nbytes)
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
