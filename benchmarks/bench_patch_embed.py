"""patch_embed with the fused pixel shuffle: Triton vs the unfused torch sequence and torch.compile of the reference.

448 x 448 tiles (32 x 32 patches of 14 px), C = 2048, bf16, 1 and 13 tiles. FLOPs per call: the conv GEMM,
2 * N * 1024 * 588 * 2048 (the same count for every provider).
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_device, bench_dtype, compiled, kernel_script, no_gpu, sizes, time_providers  # noqa: E402
from hovle.kernels.patch_embed import patch_embed, patch_embed_ref, weight_layout  # noqa: E402
from hovle.kernels.pixel_shuffle import pixel_shuffle_ref  # noqa: E402

TILES = sizes([1, 13], [2])
SIDE, PATCH, C = sizes((448, 14, 2048), (56, 14, 64))


def torch_unfused(pixels, weight, bias, pos):
    """What a plain PyTorch port runs: cuDNN conv in bf16, the pos add, then the shuffle as a separate copy."""
    out = F.conv2d(pixels.to(weight.dtype), weight, bias, stride=PATCH)  # (N, C, g, g)
    out = out.flatten(2).transpose(1, 2) + pos  # (N, C, P) -> (N, P, C)
    return pixel_shuffle_ref(out, SIDE // PATCH)  # (N, P, C) -> (N, P/4, 4C), a copy


def run() -> list[dict]:
    if no_gpu("bench_patch_embed"):
        return []
    rows, dtype = [], bench_dtype()
    shuffled_ref = compiled(lambda px, w, b, pos: patch_embed_ref(px, w, b, pos, shuffle=True))
    for n in TILES:
        pixels = torch.randn(n, 3, SIDE, SIDE, device=bench_device()).to(dtype)
        weight = (torch.randn(C, 3, PATCH, PATCH, device=bench_device()) / 24.0).to(dtype)
        bias = torch.randn(C, device=bench_device(), dtype=dtype)
        pos = torch.randn((SIDE // PATCH) ** 2, C, device=bench_device(), dtype=dtype)
        w_fast = weight_layout(weight)  # the layout the engine can keep: no per-call weight copy
        providers = {
            "triton": (patch_embed, (pixels, w_fast, bias, pos, True)),
            "triton_weight_copy": (patch_embed, (pixels, weight, bias, pos, True)),
            "torch": (torch_unfused, (pixels, weight, bias, pos)),
            "torch_compile": (shuffled_ref, (pixels, weight, bias, pos)),
        }
        flops = 2 * n * (SIDE // PATCH) ** 2 * 3 * PATCH * PATCH * C
        rows += time_providers("patch_embed", f"N={n} S={SIDE} C={C} shuffle", dtype, providers, (), flops=flops)
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
