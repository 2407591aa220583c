"""rms_norm with the fused residual add: Triton vs torch eager, torch.compile and the unfused HF-style sequence.

Bytes per call: read x, residual and weight, write y and the new residual (the same count for every provider).
"""

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_device, bench_dtype, compiled, kernel_script, no_gpu, sizes, time_providers  # noqa: E402
from hovle.kernels.rms_norm import rms_norm, rms_norm_ref  # noqa: E402

SHAPES = sizes([(4096, 2048), (1, 2048), (16, 2048)], [(4, 64)])  # (T, C): prefill and decode batches, model width
EPS = 1e-5


def unfused_hf(x, weight, eps, residual):
    """What the Hugging Face layers run: the residual add, then LlamaRMSNorm, as separate ops."""
    hidden = residual + x
    h32 = hidden.to(torch.float32)
    h32 = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h32.to(hidden.dtype), hidden


def run() -> list[dict]:
    if no_gpu("bench_rms_norm"):
        return []
    rows, dtype = [], bench_dtype()
    providers = {
        "triton": rms_norm,
        "torch": rms_norm_ref,
        "torch_compile": compiled(rms_norm_ref),
        "torch_unfused_hf": unfused_hf,
    }
    for t, c in SHAPES:
        x, residual = (torch.randn(t, c, device=bench_device(), dtype=dtype) for _ in range(2))
        weight = torch.randn(c, device=bench_device(), dtype=dtype)
        nbytes = (4 * t * c + c) * x.element_size()
        rows += time_providers(
            "rms_norm", f"T={t} C={c} residual", dtype, providers, (x, weight, EPS, residual), nbytes=nbytes
        )
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
