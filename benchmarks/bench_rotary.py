"""Standalone rotary on q and k (strided views of the fused qkv output): Triton vs torch eager and torch.compile.

Bytes per call: read q, k and the cos/sin rows, write q' and k' (the same count for every provider).
"""

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_device, bench_dtype, compiled, kernel_script, no_gpu, sizes, time_providers  # noqa: E402
from hovle.kernels.rotary import rotary, rotary_ref  # noqa: E402

# (T, Hq, Hkv, D): a prefill batch and a decode batch of 64
SHAPES = sizes([(4096, 16, 8, 128), (64, 16, 8, 128)], [(8, 4, 2, 64)])


def run() -> list[dict]:
    if no_gpu("bench_rotary"):
        return []
    rows, dtype = [], bench_dtype()
    providers = {"triton": rotary, "torch": rotary_ref, "torch_compile": compiled(rotary_ref)}
    for t, hq, hkv, d in SHAPES:
        qkv = torch.randn(t, (hq + 2 * hkv) * d, device=bench_device(), dtype=dtype)
        q = qkv[:, : hq * d].view(t, hq, d)  # (T, Hq, D) strided view
        k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)  # (T, Hkv, D) strided view
        angles = torch.rand(t, d, device=bench_device()) * 100
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        nbytes = (2 * (hq + hkv) * d + 2 * d) * t * qkv.element_size()
        shape = f"T={t} Hq={hq} Hkv={hkv} D={d}"
        rows += time_providers("rotary", shape, dtype, providers, (q, k, cos, sin), nbytes=nbytes)
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
