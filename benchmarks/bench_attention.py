"""Prefill attention at the model's heads (16 q / 8 kv, D=128, bf16, causal): Triton vs SDPA, cuDNN, flash-attn.

Providers, all on the same data and the same FLOP count (4 * S_q * S_k_avg * Hq * D, causal: S_k_avg = S/2):
  triton            our kernel, q as the strided view of a fused qkv matrix, k/v read from the paged cache (pages
                    of 64 positions in shuffled order, as in the engine)
  triton+rope       the same, rotating q on load (replaces a separate rotary pass)
  sdpa-flash+gqa    torch SDPA forced to its FlashAttention backend, enable_gqa=True (falls back to
  sdpa-cudnn+gqa    "+repeat_kv": k/v repeated to Hq heads outside the timed region, when a backend refuses GQA)
  attention_torch   the engine's torch backend (per-sequence SDPA, default backend choice)
  torch-ref         attention_ref, eager (materialises scores in query chunks); torch-compile: the same compiled
  flash-attn        flash_attn_varlen_func on packed k/v (packed outside the timed region), when importable
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (
    attention_inputs,
    bench_device,
    bench_dtype,
    bench_ms,
    compiled,
    kernel_script,  # noqa: E402
    no_gpu,
    row,
    sizes,
)
from hovle.kernels.attention import attention, attention_ref  # noqa: E402
from hovle.kernels.torch_backend import attention_torch  # noqa: E402

HQ, HKV, D, PAGE = 16, 8, 128, 64
SHAPES = sizes([(1, 256), (1, 1024), (1, 4096), (1, 13056), (4, 1024)], [(1, 64), (2, 64)])  # (batch, tokens per
# sequence), page multiples


def _inputs(b: int, s: int, dtype: torch.dtype) -> dict:
    """Dense (B, Hkv, S, D) k/v for the SDPA and flash-attn providers; the same values in the engine's shuffled
    pages for ours (k_pages, v_pages, page tables)."""
    t = b * s
    q, (k_cache, v_cache), (k_pages, v_pages, tables) = attention_inputs(t, b, s, (HQ, HKV, D), PAGE, dtype)
    cu = torch.arange(0, t + 1, s, device=bench_device(), dtype=torch.int32)
    angles = torch.rand(t, D // 2, device=bench_device()) * 6.28
    cos, sin = torch.cat((angles, angles), -1).cos().to(dtype), torch.cat((angles, angles), -1).sin().to(dtype)
    meta = (cu, torch.zeros(b, dtype=torch.int64, device=bench_device()), tables)
    return {
        "q": q,
        "k_cache": k_cache,
        "v_cache": v_cache,
        "k_pages": k_pages,
        "v_pages": v_pages,
        "meta": meta,
        "cos": cos,
        "sin": sin,
    }


def _sdpa_fn(backend, x: dict, b: int, s: int):
    """A timed closure for SDPA on one backend: GQA natively when the backend takes it, else k/v pre-repeated."""
    from torch.nn.attention import sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q = x["q"].contiguous().view(b, s, HQ, D).transpose(1, 2)  # (T, Hq, D) -> (B, Hq, S, D), BSHD in memory
    k, v = x["k_cache"], x["v_cache"]  # (B, Hkv, S, D)

    def gqa():
        with sdpa_kernel(backend):
            return sdpa(q, k, v, is_causal=True, enable_gqa=True)

    kr, vr = k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1)  # (B, Hq, S, D)

    def repeated():
        with sdpa_kernel(backend):
            return sdpa(q, kr, vr, is_causal=True)

    for suffix, fn in (("+gqa", gqa), ("+repeat_kv", repeated)):
        try:
            fn()
            return suffix, fn
        except RuntimeError as exc:
            print(f"SDPA {backend.name}{suffix} unavailable: {str(exc).splitlines()[0]}", file=sys.stderr)
    return None, None


def _flash_attn_fn(x: dict, b: int, s: int):
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    k = x["k_cache"].transpose(1, 2).reshape(b * s, HKV, D)  # (B, Hkv, S, D) -> (T, Hkv, D), packed
    v = x["v_cache"].transpose(1, 2).reshape(b * s, HKV, D)
    cu = x["meta"][0]
    return lambda: flash_attn_varlen_func(x["q"], k, v, cu, cu, s, s, causal=True)


def _providers(x: dict, b: int, s: int) -> dict:
    from torch.nn.attention import SDPBackend

    q, kc, vc, meta = x["q"], x["k_pages"], x["v_pages"], x["meta"]
    fns = {
        "triton": lambda: attention(q, kc, vc, *meta, None, None, None, s),
        "triton+rope": lambda: attention(q, kc, vc, *meta, None, x["cos"], x["sin"], s),
    }
    for name, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
        suffix, fn = _sdpa_fn(backend, x, b, s)
        if fn is not None:
            fns[name + suffix] = fn
    fns["attention_torch"] = lambda: attention_torch(q, kc, vc, *meta)
    fns["torch-ref"] = lambda: attention_ref(q, kc, vc, *meta)
    ref_compiled = compiled(attention_ref)
    if ref_compiled is not None:
        fns["torch-compile"] = lambda: ref_compiled(q, kc, vc, *meta)
    flash = _flash_attn_fn(x, b, s)
    if flash is not None:
        fns["flash-attn"] = flash
    return fns


def run() -> list[dict]:
    if no_gpu("bench_attention"):
        return []
    rows, dtype = [], bench_dtype()
    for b, s in SHAPES:
        x = _inputs(b, s, dtype)
        flops = b * 2.0 * s * s * HQ * D  # 4 * S * (S/2) * Hq * D per sequence: the causal half
        shape = f"B={b} S={s} Hq={HQ} Hkv={HKV} D={D} causal"
        for provider, fn in _providers(x, b, s).items():
            try:
                ms = bench_ms(fn)
            except Exception as exc:  # noqa: BLE001 - a provider failing at one shape must not end the run
                print(f"{provider} failed at {shape}: {exc}", file=sys.stderr)
                continue
            rows.append(row("attention", shape, dtype, provider, ms, flops=flops))
        del x
        torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
