"""Next-token selection at the model vocabulary: Triton vs sample_ref (a per-row loop with host syncs) and the
batched torch composition `sample_torch` (sync-free, the same algorithm from torch ops). Timed as CUDA-graph
replays (device time) where the provider can be captured; the per-row loop syncs and is timed eagerly.

Scenarios: greedy (temperature 0), and temperature 0.8 + top-p 0.9 after a 1.2 repetition penalty. B = 1 and 64
rows of V = 92553 fp32 logits. Bytes per call: the logits read once, B * V * 4 (the same count for every provider).
"""

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_device, kernel_script, no_gpu, sizes, time_providers  # noqa: E402
from hovle.kernels.greedy import greedy  # noqa: E402
from hovle.kernels.repetition_penalty import repetition_penalty, repetition_penalty_ref  # noqa: E402
from hovle.kernels.sample import sample, sample_ref  # noqa: E402
from hovle.kernels.torch_backend import sample_torch  # noqa: E402

BATCHES = sizes([1, 64], [2])
VOCAB = sizes(92553, 300)


def scenario(name: str, b: int) -> dict:
    """Per-row settings on the GPU: greedy, or temperature 0.8 + top-p 0.9 with a repetition penalty."""
    dev = bench_device()
    sampling = name != "greedy"
    return {
        "temperature": torch.full((b,), 0.8 if sampling else 0.0, device=dev),
        "top_k": torch.zeros(b, dtype=torch.int64, device=dev),
        "top_p": torch.full((b,), 0.9 if sampling else 1.0, device=dev),
        "uniform": torch.rand(b, device=dev),
        "penalty": torch.full((b,), 1.2, device=dev) if sampling else None,
        "seen": torch.rand(b, VOCAB, device=dev) < 0.002 if sampling else None,
    }


def providers(s: dict) -> dict:
    """name -> zero-argument callable: the optional penalty, then the sampler."""
    params = (s["temperature"], s["top_k"], s["top_p"], s["uniform"])

    def step(penalise, pick):
        if s["penalty"] is None:
            return lambda logits: pick(logits, *params)
        return lambda logits: pick(penalise(logits, s["seen"], s["penalty"]), *params)

    out = {
        "triton": step(repetition_penalty, sample),
        "torch": step(repetition_penalty_ref, sample_torch),
        "torch_ref_loop": step(repetition_penalty_ref, sample_ref),
    }
    if s["penalty"] is None:
        out["triton_greedy_only"] = greedy  # what a caller that knows every row is greedy can call instead
    return out


def run() -> list[dict]:
    if no_gpu("bench_sample"):
        return []
    rows = []
    for b in BATCHES:
        logits = 3 * torch.randn(b, VOCAB, device=bench_device())
        for name in ("greedy", "top_p_0.9+penalty"):
            rows += time_providers(
                "sample",
                f"B={b} V={VOCAB} {name}",
                torch.float32,
                providers(scenario(name, b)),
                (logits,),
                nbytes=b * VOCAB * 4,
            )
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
