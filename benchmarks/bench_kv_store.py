"""kv_store with the key rotation fused: Triton vs the unfused torch sequence (rotate, then index-put) and its
torch.compile, at a 4096-token prefill and a 64-sequence decode step (Hkv=8, D=128).

Bytes per call: read k, v, the cos/sin rows and the targets, write k and v into the cache (same for every provider).
"""

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_device, bench_dtype, compiled, kernel_script, no_gpu, sizes, time_providers  # noqa: E402
from hovle.kernels.kv_store import kv_store, kv_store_ref  # noqa: E402

HQ, HKV, D, PAGE, N_PAGES = sizes((16, 8, 128, 64, 4608), (4, 2, 64, 16, 32))
PREFILL, DECODE = sizes((4096, 64), (64, 4))  # tokens stored per call


def case(name: str, dtype: torch.dtype):
    """(k, v, k_pages, v_pages, blocks, offsets, cos, sin) for a prefill (4096 tokens into 64 shuffled pages) or a
    decode batch (one token for each of 64 sequences, at random positions)."""
    order = torch.randperm(N_PAGES)
    if name == "prefill":
        pos = torch.arange(PREFILL)
        blocks, offsets = order[pos // PAGE], pos % PAGE
    else:
        blocks, offsets = order[:DECODE], torch.randint(0, PAGE, (DECODE,))
    t = len(offsets)
    qkv = torch.randn(t, (HQ + 2 * HKV) * D, device=bench_device(), dtype=dtype)
    k = qkv[:, HQ * D : (HQ + HKV) * D].view(t, HKV, D)  # (T, Hkv, D) strided view
    v = qkv[:, (HQ + HKV) * D :].view(t, HKV, D)
    caches = [torch.zeros(N_PAGES, HKV, PAGE, D, device=bench_device(), dtype=dtype) for _ in range(2)]
    angles = torch.rand(t, D, device=bench_device()) * 100
    dev = bench_device()
    return k, v, *caches, blocks.to(dev), offsets.to(dev), angles.cos().to(dtype), angles.sin().to(dtype)


def run() -> list[dict]:
    if no_gpu("bench_kv_store"):
        return []
    rows, dtype = [], bench_dtype()
    providers = {"triton": kv_store, "torch_unfused": kv_store_ref, "torch_compile": compiled(kv_store_ref)}
    for name in ("prefill", "decode"):
        args = case(name, dtype)
        t = args[0].shape[0]
        nbytes = (4 * HKV * D + 2 * D) * t * args[0].element_size() + 2 * t * 8
        shape = f"{name} T={t} Hkv={HKV} D={D} page={PAGE} rotate"
        rows += time_providers("kv_store", shape, dtype, providers, args, nbytes=nbytes)
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
