"""swiglu on the fused gate/up projection: Triton vs torch eager (fp32 math), torch.compile and HF's bf16 ops.

Bytes per call: read (T, 2I), write (T, I) (the same count for every provider).
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_device, bench_dtype, compiled, kernel_script, no_gpu, sizes, time_providers  # noqa: E402
from hovle.kernels.swiglu import swiglu, swiglu_ref  # noqa: E402

SHAPES = sizes([(4096, 8192), (1, 8192)], [(4, 128)])  # (T, I): a prefill batch and one decode token at the model's I


def unfused_hf(gate_up):
    """Hugging Face's MLP activation: silu(gate) * up as two ops in the activation dtype."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def run() -> list[dict]:
    if no_gpu("bench_swiglu"):
        return []
    rows, dtype = [], bench_dtype()
    providers = {
        "triton": swiglu,
        "torch": swiglu_ref,
        "torch_compile": compiled(swiglu_ref),
        "torch_unfused_hf": unfused_hf,
    }
    for t, i in SHAPES:
        gate_up = torch.randn(t, 2 * i, device=bench_device(), dtype=dtype)
        nbytes = 3 * t * i * gate_up.element_size()
        rows += time_providers("swiglu", f"T={t} I={i}", dtype, providers, (gate_up,), nbytes=nbytes)
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
