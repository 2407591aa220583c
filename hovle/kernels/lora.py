"""Partial LoRA (InternLM-XComposer2's PLoRA): a low-rank update added to a projection's output on some rows only.

    y[s:e] += scale * (x[s:e] @ A^T) @ B^T        for each row span [s, e) (the image rows of a packed batch)

y: (T, N) the base projection's output, updated in place; x: (T, K) its input; A: (r, K); B: (N, r); spans: host
(start, end) pairs. Rows outside the spans are untouched, so text rows and decode steps run the base weights only.

There is no Triton kernel on purpose: the work is two GEMMs on a contiguous slice, and `addmm_` already fuses the
scaled add into cuBLAS's epilogue (beta = 1), so both backends run `lora_add` below; `lora_add_ref` is the fp32 spec.
"""

from __future__ import annotations

import torch


def lora_add_ref(
    y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, spans
) -> torch.Tensor:
    for s, e in spans:
        delta = (x[s:e].float() @ a.float().t()) @ b.float().t()  # (e - s, r) @ (r, N)
        y[s:e] = (y[s:e].float() + scale * delta).to(y.dtype)
    return y


def lora_add(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, spans) -> torch.Tensor:
    """lora_add_ref's contract in the activation dtype: the rank-r product, then one fused multiply-add per span."""
    for s, e in spans:
        if e > s:
            y[s:e].addmm_(x[s:e] @ a.t(), b.t(), alpha=scale)  # (e-s, r) @ (r, N), added in cuBLAS's epilogue
    return y
