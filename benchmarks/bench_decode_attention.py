"""Decode attention at the model's head shape (Hq=16, Hkv=8, D=128, bf16): batch 1/8/32/64 x context 1k/4k/16k.

Providers: triton (kernels.decode_attention, flash-decoding), torch-sdpa (decode_attention_torch), torch-eager
(decode_attention_ref, fp32 math), torch-compile (torch.compile of the ref), and flash-attn
(flash_attn_with_kvcache, when the package imports). flash-attn wants (B, S, Hkv, D) caches: it gets
k_cache.transpose(1, 2), a strided view of our (N_slots, Hkv, S_max, D) cache (no copy; its kernel takes the
seq/head strides as given), with cache_batch_idx = slots; if it rejects the view or disagrees with our output the
provider is skipped with a message, never timed on a copy.
All sequences hold the full context; bytes per call = K and V of every sequence's context + q + out, the same count
for every provider; GB/s and the fraction of the measured copy bandwidth come from benchmarks.common.row.
"""

from __future__ import annotations

import sys

import torch

from benchmarks.common import append_rows, bench_ms, compiled, row
from kernels.decode_attention import (
    _decode_attention_kernel,
    _num_splits,
    _sm_count,
    decode_attention,
    decode_attention_ref,
    decode_attention_torch,
)

HQ, HKV, D = 16, 8, 128
BATCHES = (1, 8, 32, 64)
CONTEXTS = (1024, 4096, 16384)
CACHE_LIMIT = 60 * 2**30  # bytes of K + V cache per shape; the eager ref needs ~3x more for its fp32 copies


def _flash_attn(q, k_cache, v_cache, seq_lens, slots, expected):
    """A flash_attn_with_kvcache closure over transposed views of our cache, or None (with the reason printed)."""
    try:
        from flash_attn import flash_attn_with_kvcache
    except ImportError:
        return None
    k_t, v_t = k_cache.transpose(1, 2), v_cache.transpose(1, 2)  # (N, Hkv, S, D) -> (N, S, Hkv, D) views
    lens32, slots32 = seq_lens.to(torch.int32), slots.to(torch.int32)

    def fn():
        out = flash_attn_with_kvcache(q.unsqueeze(1), k_t, v_t, cache_seqlens=lens32, cache_batch_idx=slots32)
        return out.squeeze(1)  # (B, 1, Hq, D) -> (B, Hq, D)

    try:
        err = (fn().float() - expected.float()).abs().max().item()
    except Exception as exc:  # noqa: BLE001 - the installed version may reject strided caches
        print(f"flash-attn skipped: {exc}", file=sys.stderr)
        return None
    if err > 2e-2:
        print(f"flash-attn skipped: differs from ours by {err:.3g}", file=sys.stderr)
        return None
    return fn


def _inputs(batch: int, ctx: int, dtype: torch.dtype):
    qkv = torch.randn(batch, (HQ + 2 * HKV) * D, device="cuda", dtype=dtype)
    q = qkv[:, : HQ * D].view(batch, HQ, D)  # (B, Hq, D), a strided view as the engine passes it
    k_cache = torch.randn(batch, HKV, ctx, D, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    slots = torch.arange(batch, dtype=torch.int64, device="cuda")
    return q, k_cache, v_cache, seq_lens, slots


def _bench_shape(batch: int, ctx: int, dtype: torch.dtype) -> list[dict]:
    args = _inputs(batch, ctx, dtype)
    q, k_cache = args[0], args[1]
    kv_bytes = 2 * k_cache.numel() * k_cache.element_size()
    nbytes = kv_bytes + 2 * q.numel() * q.element_size()
    shape = f"B={batch} ctx={ctx} Hq={HQ} Hkv={HKV} D={D}"
    ours = decode_attention(*args)  # compiles and autotunes before timing
    providers = {"triton": lambda: decode_attention(*args), "torch-sdpa": lambda: decode_attention_torch(*args)}
    if 3 * kv_bytes < CACHE_LIMIT:
        providers["torch-eager"] = lambda: decode_attention_ref(*args)
        torch._dynamo.reset()  # a fresh compile per shape: dynamo's recompile limit would fall back to eager
        ref_compiled = compiled(decode_attention_ref)
        if ref_compiled is not None:
            providers["torch-compile"] = lambda: ref_compiled(*args)
    fa = _flash_attn(*args, ours)
    if fa is not None:
        providers["flash-attn"] = fa
    splits = _num_splits(batch, HKV, ctx, _sm_count(q.device))
    rows = []
    for name, fn in providers.items():
        try:
            fn()  # compile outside the timing
            ms = bench_ms(fn)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory or a compile failure: report and go on
            print(f"{name} {shape} skipped: {exc}", file=sys.stderr)
            torch.cuda.empty_cache()
            continue
        extra = {"num_splits": splits, "config": str(_decode_attention_kernel.best_config)} if name == "triton" else {}
        rows.append(row("decode_attention", shape, dtype, name, ms, nbytes=nbytes, **extra))
    return rows


def run() -> list[dict]:
    if not torch.cuda.is_available():
        print("bench_decode_attention: no CUDA device, nothing to time", file=sys.stderr)
        return []
    torch.manual_seed(0)
    rows = []
    for ctx in CONTEXTS:
        for batch in BATCHES:
            if 2 * batch * HKV * ctx * D * 2 > CACHE_LIMIT:
                continue
            rows += _bench_shape(batch, ctx, torch.bfloat16)
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    append_rows(run())
