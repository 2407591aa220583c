"""kv_store with the key rotation fused: Triton vs the unfused torch sequence (rotate, then index-put) and its
torch.compile, at a 4096-token prefill and a 64-sequence decode step (Hkv=8, D=128).

Bytes per call: read k, v, the cos/sin rows and the targets, write k and v into the cache (same for every provider).
"""

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_rows, compiled, row, time_or_none  # noqa: E402
from kernels.kv_store import kv_store, kv_store_ref  # noqa: E402

HQ, HKV, D, S_MAX = 16, 8, 128, 4608


def case(name: str, dtype: torch.dtype):
    """(k, v, k_cache, v_cache, token_slots, token_pos, cos, sin) for a prefill or a decode batch."""
    if name == "prefill":
        n_slots, token_slots, token_pos = 1, torch.zeros(4096, dtype=torch.int64), torch.arange(4096)
    else:
        n_slots, token_slots, token_pos = 64, torch.arange(64), torch.randint(0, S_MAX, (64,))
    t = len(token_pos)
    qkv = torch.randn(t, (HQ + 2 * HKV) * D, device="cuda", dtype=dtype)
    k = qkv[:, HQ * D : (HQ + HKV) * D].view(t, HKV, D)  # (T, Hkv, D) strided view
    v = qkv[:, (HQ + HKV) * D :].view(t, HKV, D)
    caches = [torch.zeros(n_slots, HKV, S_MAX, D, device="cuda", dtype=dtype) for _ in range(2)]
    angles = torch.rand(t, D, device="cuda") * 100
    return k, v, *caches, token_slots.cuda(), token_pos.cuda(), angles.cos().to(dtype), angles.sin().to(dtype)


def run() -> list[dict]:
    if not torch.cuda.is_available():
        print("bench_kv_store: no CUDA device, nothing to time", file=sys.stderr)
        return []
    rows, dtype = [], torch.bfloat16
    providers = {"triton": kv_store, "torch_unfused": kv_store_ref, "torch_compile": compiled(kv_store_ref)}
    for name in ("prefill", "decode"):
        args = case(name, dtype)
        t = args[0].shape[0]
        nbytes = (4 * HKV * D + 2 * D) * t * args[0].element_size() + 2 * t * 8
        for provider, fn in providers.items():
            ms = time_or_none(fn, args)
            if ms is not None:
                shape = f"{name} T={t} Hkv={HKV} D={D} rotate"
                rows.append(row("kv_store", shape, dtype, provider, ms, nbytes=nbytes))
    return rows


if __name__ == "__main__":
    append_rows(run())
