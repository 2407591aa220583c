"""Decode attention at the model's head shape (Hq=16, Hkv=8, D=128, bf16): batch 1/8/32/64 x context 1k/4k/16k.

Providers: triton (kernels.decode_attention, flash-decoding over the engine's shuffled 64-position pages),
torch-sdpa (decode_attention_torch, the torch backend), torch-sdpa-dense (SDPA on dense per-sequence caches: the
library kernel without paging), torch-eager (decode_attention_ref, a per-sequence loop), torch-compile (the
batched torch backend compiled), and flash-attn (flash_attn_with_kvcache on 256-position pages, when the package
imports). Every provider that can be captured is timed as CUDA-graph replays (device time, no launch overhead:
what the captured decode step pays); the row's `timing` says which. All sequences hold the full context; bytes per
call = K and V of every sequence's context + q + out; GB/s and the fraction of the measured copy bandwidth come from
benchmarks.common.row.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (  # noqa: E402
    attention_inputs,
    bench_device,
    bench_dtype,
    compiled,
    device_ms,
    kernel_script,
    no_gpu,
    paged,
    row,
    sizes,
)
from hovle.kernels.decode_attention import (  # noqa: E402
    _decode_attention_kernel,
    _num_splits,
    _sm_count,
    decode_attention,
    decode_attention_ref,
)
from hovle.kernels.torch_backend import decode_attention_torch  # noqa: E402

HQ, HKV, D, PAGE = sizes((16, 8, 128, 64), (4, 2, 64, 16))
BATCHES = sizes((1, 8, 32, 64), (2,))
CONTEXTS = sizes((1024, 4096, 16384), (64,))
CACHE_LIMIT = 30 * 2**30  # bytes of K + V cache per shape (held twice: dense and paged); the eager ref needs more


def _flash_attn(q, dense_k, dense_v, seq_lens, expected):
    """flash_attn_with_kvcache on the same values in 256-position pages (its paged layout needs that size)."""
    try:
        import flash_attn  # noqa: F401

        from hovle.kernels.flash_attn_backend import decode_attention_flash
    except ImportError:
        return None
    k_pages, tables = paged(dense_k, 256)
    v_pages, _ = paged(dense_v, 256)

    def fn():
        return decode_attention_flash(q, k_pages, v_pages, seq_lens, tables)

    try:
        err = (fn().float() - expected.float()).abs().max().item()
    except Exception as exc:  # noqa: BLE001 - the installed version may reject our strided pages
        print(f"flash-attn skipped: {exc}", file=sys.stderr)
        return None
    if err > 2e-2:
        print(f"flash-attn skipped: differs from ours by {err:.3g}", file=sys.stderr)
        return None
    return fn


def _inputs(batch: int, ctx: int, dtype: torch.dtype):
    """(q, k_pages, v_pages, seq_lens, tables) plus the dense caches the library providers read."""
    heads = (HQ, HKV, D)
    q, (dense_k, dense_v), (k_pages, v_pages, tables) = attention_inputs(batch, batch, ctx, heads, PAGE, dtype)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=bench_device())
    return (q, k_pages, v_pages, seq_lens, tables), (dense_k, dense_v)


def _sdpa_dense(q, dense_k, dense_v):
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    return lambda: sdpa(q.unsqueeze(2), dense_k, dense_v, enable_gqa=True).squeeze(2)


def _bench_shape(batch: int, ctx: int, dtype: torch.dtype) -> list[dict]:
    args, (dense_k, dense_v) = _inputs(batch, ctx, dtype)
    q = args[0]
    kv_bytes = 2 * dense_k.numel() * dense_k.element_size()
    nbytes = kv_bytes + 2 * q.numel() * q.element_size()
    shape = f"B={batch} ctx={ctx} Hq={HQ} Hkv={HKV} D={D} page={PAGE}"
    ours = decode_attention(*args, max_seq_len=ctx)  # compiles and autotunes before timing
    providers = {
        "triton": lambda: decode_attention(*args, max_seq_len=ctx),
        "torch-sdpa": lambda: decode_attention_torch(*args, max_seq_len=ctx),
        "torch-sdpa-dense": _sdpa_dense(q, dense_k, dense_v),
    }
    if 3 * kv_bytes < CACHE_LIMIT:
        providers["torch-eager"] = lambda: decode_attention_ref(*args)
        torch._dynamo.reset()  # a fresh compile per shape: dynamo's recompile limit would fall back to eager
        torch_compiled = compiled(decode_attention_torch)
        if torch_compiled is not None:
            providers["torch-compile"] = lambda: torch_compiled(*args, max_seq_len=ctx)
    fa = _flash_attn(q, dense_k, dense_v, args[3], ours)
    if fa is not None:
        providers["flash-attn"] = fa
    splits = _num_splits(batch, HKV, ctx, _sm_count(q.device))
    rows = []
    for name, fn in providers.items():
        try:
            ms, timing = device_ms(fn)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory or a compile failure: report and go on
            print(f"{name} {shape} skipped: {exc}", file=sys.stderr)
            torch.cuda.empty_cache()
            continue
        extra = {"num_splits": splits, "config": str(_decode_attention_kernel.best_config)} if name == "triton" else {}
        rows.append(row("decode_attention", shape, dtype, name, ms, nbytes=nbytes, timing=timing, **extra))
    return rows


def run() -> list[dict]:
    if no_gpu("bench_decode_attention"):
        return []
    torch.manual_seed(0)
    rows = []
    for ctx in CONTEXTS:
        for batch in BATCHES:
            if 2 * batch * HKV * ctx * D * 2 > CACHE_LIMIT:
                continue
            rows += _bench_shape(batch, ctx, bench_dtype())
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
