"""layer_norm with the fused residual add: Triton vs torch eager (fp32 math), torch.compile and nn.LayerNorm's ops.

Bytes per call: read x, residual, weight and bias, write y and the new residual (the same count for every provider).
Shapes: CLIP ViT-L/14-336's 16 crops of 577 tokens at C 1024, and a DeBERTa-base batch (C 768).
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_device, bench_dtype, compiled, kernel_script, no_gpu, sizes, time_providers  # noqa: E402
from hovle.kernels.layer_norm import layer_norm, layer_norm_ref  # noqa: E402

SHAPES = sizes([(16 * 577, 1024), (8 * 128, 768)], [(4, 64)])  # (T, C)
EPS = 1e-5


def unfused_torch(x, weight, bias, eps, residual):
    """What the Hugging Face encoders run: the residual add, then F.layer_norm, as separate ops."""
    hidden = x + residual
    return F.layer_norm(hidden, hidden.shape[-1:], weight, bias, eps), hidden


def run() -> list[dict]:
    if no_gpu("bench_layer_norm"):
        return []
    rows, dtype = [], bench_dtype()
    providers = {
        "triton": layer_norm,
        "torch": layer_norm_ref,
        "torch_compile": compiled(layer_norm_ref),
        "torch_unfused": unfused_torch,
    }
    for t, c in SHAPES:
        x, residual = (torch.randn(t, c, device=bench_device(), dtype=dtype) for _ in range(2))
        weight, bias = (torch.randn(c, device=bench_device(), dtype=dtype) for _ in range(2))
        nbytes = (4 * t * c + 2 * c) * x.element_size()
        args = (x, weight, bias, EPS, residual)
        rows += time_providers("layer_norm", f"T={t} C={c} residual", dtype, providers, args, nbytes=nbytes)
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
