"""norm_linear at the decode step's shapes: residual add + RMSNorm + projection (+ SwiGLU) as one Triton kernel,
against the separate kernels (Triton rms_norm, cuBLAS linear, Triton swiglu), the torch reference composition and
its torch.compile. M = 1, 8, 64 rows; the model's four projections that follow a norm (qkv, gate/up, the output
head) at K = 2048. Device time from CUDA-graph replay (what the captured decode step pays). Bytes per call: the
weight (the bulk), x, residual and outputs; GB/s and the fraction of the measured copy bandwidth from
benchmarks.common.row. The engine picks fused or separate per shape by measuring both (hovle/kernels/autoselect.py);
these rows show what it chooses between.
"""

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_device, bench_dtype, compiled, kernel_script, no_gpu, sizes, time_providers  # noqa: E402
from hovle.kernels.norm_linear import _unfused, norm_linear, norm_linear_ref  # noqa: E402

K = 2048
SHAPES = sizes([("qkv", 4096, False), ("gate_up+swiglu", 16384, True), ("head", 92553, False)], [("qkv", 64, False)])


def run() -> list[dict]:
    if no_gpu("bench_norm_linear"):
        return []
    rows, dtype = [], bench_dtype()
    providers = {
        "triton-fused": norm_linear,
        "separate": _unfused,
        "torch": norm_linear_ref,
        "torch_compile": compiled(norm_linear_ref),
    }
    for m in (1, 8, 64):
        for name, n, swiglu in SHAPES:
            x, res = (torch.randn(m, K, device=bench_device(), dtype=dtype) for _ in range(2))
            nw = torch.ones(K, device=bench_device(), dtype=dtype)
            w = torch.randn(n, K, device=bench_device(), dtype=dtype) / K**0.5
            nbytes = (n * K + 4 * m * K + m * (n // 2 if swiglu else n)) * 2
            rows += time_providers(
                "norm_linear",
                f"{name} M={m} N={n} K={K}",
                dtype,
                providers,
                (x, res, nw, 1e-5, w, swiglu),
                nbytes=nbytes,
            )
            del w
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
