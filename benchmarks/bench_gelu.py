"""gelu (erf and quick): Triton vs torch eager (fp32 math), torch.compile and torch's own activation.

Bytes per call: read and write (T, I) once (the same count for every provider). Shape: the MLP hidden activations of
CLIP ViT-L/14-336 on 16 crops of 577 tokens (I 4096).
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_device, bench_dtype, compiled, kernel_script, no_gpu, sizes, time_providers  # noqa: E402
from hovle.kernels.gelu import gelu, gelu_ref  # noqa: E402

SHAPES = sizes([(16 * 577, 4096)], [(4, 128)])  # (T, I)


def native(x, kind):
    """torch's activation in the activation dtype: F.gelu (erf or tanh) or CLIP's x * sigmoid(1.702 x) as two ops."""
    if kind == "quick":
        return x * torch.sigmoid(1.702 * x)
    return F.gelu(x, approximate="tanh" if kind == "tanh" else "none")


def run() -> list[dict]:
    if no_gpu("bench_gelu"):
        return []
    rows, dtype = [], bench_dtype()
    providers = {"triton": gelu, "torch": gelu_ref, "torch_compile": compiled(gelu_ref), "torch_native": native}
    for t, i in SHAPES:
        x = torch.randn(t, i, device=bench_device(), dtype=dtype)
        nbytes = 2 * t * i * x.element_size()
        for kind in ("quick", "erf"):
            rows += time_providers("gelu", f"T={t} I={i} {kind}", dtype, providers, (x, kind), nbytes=nbytes)
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
