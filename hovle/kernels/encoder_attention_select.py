"""The Triton backend's encoder attention: our FlashAttention-2 kernel, or torch's SDPA where it is faster.

Same contract as `encoder_attention` (hovle/kernels/encoder_attention.py). The candidates all take the inputs as they
come (strided (B, L, H, D) views, grouped kv heads, the key mask and bias folded into one additive float mask for
SDPA): ours, SDPA with its own backend choice, and SDPA forced to its cuDNN, FlashAttention or memory-efficient
backend. Which is fastest depends on the shape (CLIP's 577 tokens at D = 64, DeBERTa's short masked rows with a
bias, fusion cross-attention with Lq >> Lk) and on the GPU, so `encoder_attention_auto` measures the candidates once
per shape bucket on CUDA (hovle/kernels/autoselect.py) and keeps the fastest; a backend that refuses the inputs
(FlashAttention takes no mask) raises and is left out. Elsewhere (the CPU interpreter) our kernel runs.
HOVLE_CHOOSE_ENCODER_ATTENTION=<candidate> forces one.
"""

from __future__ import annotations

import torch

from ._triton import triton
from .encoder_attention import _check, _encoder_attention_op, encoder_attention_torch


def _ours(q, k, v, key_mask, bias, scale):
    return _encoder_attention_op(q, k, v, key_mask, bias, None if scale is None else float(scale))


def _sdpa(backend: str):
    def run(q, k, v, key_mask, bias, scale):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        chosen = {
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
        }[backend]
        with sdpa_kernel(chosen):
            return encoder_attention_torch(q, k, v, key_mask, bias, scale)

    return run


def _candidates() -> dict:
    """Ours first: what runs where nothing can be measured."""
    return {
        "triton": _ours,
        "sdpa": encoder_attention_torch,
        "sdpa-cudnn": _sdpa("cudnn"),
        "sdpa-flash": _sdpa("flash"),
        "sdpa-efficient": _sdpa("efficient"),
    }


_CHOICE = None


def _bucket(q, k, key_mask, bias) -> tuple:
    """Batch and lengths rounded up to powers of 2; heads, D and dtype exact; whether a mask is given and which
    dims of the bias are broadcast (SDPA materialises the mask, ours reads it with stride 0)."""
    b, lq, hq, d = q.shape
    broadcast = None
    if bias is not None:
        full = bias.expand(b, hq, lq, k.shape[1])  # (B, Hq, Lq, Lk) view, stride 0 where broadcast
        broadcast = tuple(s == 0 for s in full.stride())
    lengths = (triton.next_power_of_2(lq), triton.next_power_of_2(k.shape[1]))
    return (triton.next_power_of_2(b), *lengths, hq, k.shape[2], d, q.dtype, key_mask is not None, broadcast)


def encoder_attention_auto(q, k, v, key_mask=None, bias=None, scale=None) -> torch.Tensor:
    """encoder_attention's contract; on CUDA the fastest of ours and SDPA's backends for this shape bucket."""
    global _CHOICE
    _check(q, k, v, key_mask, bias)  # once, for every candidate: the same messages whichever runs
    if _CHOICE is None:
        from .autoselect import Choice

        _CHOICE = Choice("encoder_attention", _candidates())
    return _CHOICE(_bucket(q, k, key_mask, bias), q, k, v, key_mask, bias, scale)
