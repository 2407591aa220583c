"""Encoder attention (bidirectional, padded batch): Triton vs SDPA and its backends, torch eager and torch.compile.

Providers, all on the same data and the same FLOP count (4 * B * Hq * Lq * Lk * D, masked keys included):
  triton            our kernel; q, k, v strided views of a fused qkv projection, as the encoders pass them
  sdpa              encoder_attention_torch: SDPA with its own backend choice (mask and bias as one float mask)
  sdpa-cudnn, sdpa-flash, sdpa-efficient    the same forced to one backend (left out where it refuses the inputs:
                    FlashAttention takes no mask)
  auto              encoder_attention_auto: what the triton table runs (the fastest of the above, measured once)
  torch-ref         encoder_attention_ref, eager (materialises the fp32 scores); torch-compile: the same compiled
Shapes: CLIP ViT-L/14-336 (16 crops, 577 tokens, 16 heads of 64), a DeBERTa-base batch (relative-position bias
(B, H, L, L) and padding), and a fusion layer's image queries over padded text keys.
"""

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import bench_device, bench_dtype, compiled, kernel_script, no_gpu, sizes, time_providers  # noqa: E402
from hovle.kernels.encoder_attention import encoder_attention, encoder_attention_ref, encoder_attention_torch  # noqa: E402
from hovle.kernels.encoder_attention_select import _sdpa, encoder_attention_auto  # noqa: E402

SHAPES = sizes(  # B, Lq, Lk, H, D, key mask, bias
    [(16, 577, 577, 16, 64, False, False), (8, 256, 256, 12, 64, True, True), (4, 1297, 32, 12, 64, True, False)],
    [(2, 16, 16, 2, 32, True, True)],
)


def _inputs(b, lq, lk, h, d, masked, biased, dtype):
    dev = bench_device()
    q = torch.randn(b, lq, 3, h, d, device=dev, dtype=dtype)[:, :, 0]  # (B, Lq, H, D) view of a fused projection
    kv = torch.randn(b, lk, 3, h, d, device=dev, dtype=dtype)
    key_mask = None
    if masked:  # every row padded to a random length of at least half
        lengths = torch.randint(lk // 2 + 1, lk + 1, (b,), device=dev)
        key_mask = torch.arange(lk, device=dev)[None, :] < lengths[:, None]  # (B, Lk)
    bias = torch.randn(b, h, lq, lk, device=dev, dtype=dtype) if biased else None
    return q, kv[:, :, 1], kv[:, :, 2], key_mask, bias


def run() -> list[dict]:
    if no_gpu("bench_encoder_attention"):
        return []
    rows, dtype = [], bench_dtype()
    providers = {
        "triton": encoder_attention,
        "sdpa": encoder_attention_torch,
        "sdpa-cudnn": _sdpa("cudnn"),
        "sdpa-flash": _sdpa("flash"),
        "sdpa-efficient": _sdpa("efficient"),
        "auto": encoder_attention_auto,
        "torch-ref": encoder_attention_ref,
        "torch-compile": compiled(encoder_attention_ref),
    }
    for b, lq, lk, h, d, masked, biased in SHAPES:
        args = (*_inputs(b, lq, lk, h, d, masked, biased, dtype), None)
        flops = 4.0 * b * h * lq * lk * d
        shape = f"B={b} Lq={lq} Lk={lk} H={h} D={d}" + " mask" * masked + " bias" * biased
        rows += time_providers("encoder_attention", shape, dtype, providers, args, flops=flops)
        del args
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    kernel_script(run, __doc__)
