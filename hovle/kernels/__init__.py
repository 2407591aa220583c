"""Pure tensor functions, one file per op, each with a plain-PyTorch `<op>_ref` beside its fast versions.

The engine never calls an implementation directly: it asks `get_ops(backend)` for an `Ops` table and calls
`ops.<op>(...)`. The "torch" table (torch_backend.py and the references) runs the whole model on a CPU with nothing
but PyTorch; the "triton" table fills the same fields with kernels of the same signatures, and "flash-attn"
swaps the attention ops of the Triton table for the flash-attn package. What the model must know about a backend
(the layout it wants the patch weight in, the page size its attention needs) is a field of the table too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .attention import attention_ref
from .decode_attention import decode_attention_ref
from .encoder_attention import encoder_attention_ref, encoder_attention_torch
from .gelu import gelu_ref
from .greedy import greedy_ref
from .kv_store import kv_store_ref
from .layer_norm import layer_norm_ref
from .lora import lora_add, lora_add_ref
from .norm_linear import norm_linear_ref
from .patch_embed import patch_embed_ref
from .pixel_shuffle import pixel_shuffle_ref
from .repetition_penalty import repetition_penalty_ref
from .rms_norm import rms_norm_ref
from .rotary import rotary_ref
from .sample import sample_ref
from .swiglu import swiglu_ref
from .torch_backend import attention_torch, decode_attention_torch, sample_torch

BACKENDS = ("torch", "triton", "flash-attn")


def _same(weight):
    return weight


@dataclass(frozen=True)
class Ops:
    """The op table the model runs on; every op field has the signature of its `<op>_ref`."""

    name: str
    rms_norm: Callable
    rotary: Callable
    attention: Callable
    decode_attention: Callable
    kv_store: Callable
    patch_embed: Callable
    pixel_shuffle: Callable
    repetition_penalty: Callable
    sample: Callable
    greedy: Callable
    norm_linear: Callable = norm_linear_ref  # residual add + RMSNorm + projection (+ SwiGLU): fusable
    layer_norm: Callable = layer_norm_ref  # encoders (CLIP, DeBERTa, fusion layers): LayerNorm with bias
    gelu: Callable = gelu_ref  # "erf", "tanh" or "quick" GELU of an encoder MLP
    encoder_attention: Callable = encoder_attention_torch  # bidirectional, padded batch, key mask, additive bias
    lora_add: Callable = lora_add  # PLoRA on image rows: cuBLAS's fused addmm on every backend (see lora.py)
    swiglu: Callable = swiglu_ref  # silu(gate) * up of a fused gate/up projection (the unfused PLoRA layers)
    patch_weight_layout: Callable = _same  # (C, 3, p, p) weight -> the same values in the layout patch_embed reads best
    page_multiple: int = 1  # the KV page size must be a multiple of this


TORCH_OPS = Ops(
    name="torch",
    rms_norm=rms_norm_ref,
    rotary=rotary_ref,
    attention=attention_torch,
    decode_attention=decode_attention_torch,
    kv_store=kv_store_ref,
    patch_embed=patch_embed_ref,
    pixel_shuffle=pixel_shuffle_ref,
    repetition_penalty=repetition_penalty_ref,
    sample=sample_torch,
    greedy=greedy_ref,
)


_LAUNCHERS = {  # Ops field -> (module, Triton launcher name)
    "rms_norm": ("rms_norm", "rms_norm"),
    "rotary": ("rotary", "rotary"),
    "attention": ("attention_select", "attention_auto"),
    "decode_attention": ("decode_attention", "decode_attention"),
    "kv_store": ("kv_store", "kv_store"),
    "patch_embed": ("patch_embed", "patch_embed"),
    "pixel_shuffle": ("pixel_shuffle", "pixel_shuffle"),
    "repetition_penalty": ("repetition_penalty", "repetition_penalty"),
    "sample": ("sample", "sample"),
    "greedy": ("greedy", "greedy"),
    "norm_linear": ("norm_linear", "norm_linear_auto"),
    "swiglu": ("swiglu", "swiglu"),
    "layer_norm": ("layer_norm", "layer_norm"),
    "gelu": ("gelu", "gelu"),
    "encoder_attention": ("encoder_attention_select", "encoder_attention_auto"),
    "patch_weight_layout": ("patch_embed", "weight_layout"),
}


def _triton_ops() -> Ops:
    """The Triton launchers, each file's `<op>`."""
    import importlib

    fields = {
        field: getattr(importlib.import_module(f"{__name__}.{module}"), name)
        for field, (module, name) in _LAUNCHERS.items()
    }
    return Ops(name="triton", **fields)


def _flash_attn_ops(device: str) -> Ops:
    """The Triton table with both attention ops on the flash-attn package (optional; CUDA only)."""
    from .flash_attn_backend import PAGE_MULTIPLE, attention_flash, decode_attention_flash, flash_attn_module

    if flash_attn_module() is None or device != "cuda":
        raise ValueError(
            f"backend 'flash-attn' needs the flash-attn package and a CUDA device (device {device!r}, package "
            f"{'found' if flash_attn_module() else 'not installed'}); use 'triton' (the default on CUDA) or 'torch'"
        )
    return replace(
        _triton_ops(),
        name="flash-attn",
        attention=attention_flash,
        decode_attention=decode_attention_flash,
        page_multiple=PAGE_MULTIPLE,
    )


def get_ops(backend: str = "auto", device: str = "cpu") -> Ops:
    """The op table for `backend` on `device` ("cpu" or "cuda").

    "torch": the plain-PyTorch implementations (any device). "triton": the Triton kernels (CUDA, or the CPU when
    TRITON_INTERPRET=1). "flash-attn": Triton, with attention through the flash-attn package (when installed).
    "auto": Triton on CUDA when it is installed, torch otherwise.
    """
    from ._triton import HAS_TRITON, triton_usable

    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend {backend!r} is not available; choose one of {BACKENDS + ('auto',)}")
    if backend == "auto":
        backend = "triton" if device == "cuda" and HAS_TRITON else "torch"
    if backend == "flash-attn":
        return _flash_attn_ops(device)
    if backend == "triton":
        if not triton_usable(device):
            raise ValueError(
                f"backend 'triton' cannot run on device {device!r} here: it needs triton and a CUDA device "
                "(or TRITON_INTERPRET=1 for the CPU interpreter)"
            )
        return _triton_ops()
    return TORCH_OPS


__all__ = [
    "BACKENDS",
    "Ops",
    "TORCH_OPS",
    "get_ops",
    "attention_ref",
    "attention_torch",
    "decode_attention_ref",
    "decode_attention_torch",
    "encoder_attention_ref",
    "encoder_attention_torch",
    "gelu_ref",
    "layer_norm_ref",
    "lora_add",
    "lora_add_ref",
    "greedy_ref",
    "kv_store_ref",
    "norm_linear_ref",
    "patch_embed_ref",
    "pixel_shuffle_ref",
    "repetition_penalty_ref",
    "rms_norm_ref",
    "rotary_ref",
    "sample_ref",
    "sample_torch",
    "swiglu_ref",
]
