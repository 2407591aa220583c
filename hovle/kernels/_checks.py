"""Argument checks shared by the launchers: every message names the argument and shows what was found."""

from __future__ import annotations

import torch

from ._triton import triton_usable

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def require(ok: bool, message: str, exc: type[Exception] = ValueError) -> None:
    if not ok:
        raise exc(message)


def check_float(name: str, t: torch.Tensor) -> None:
    require(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    require(t.dtype in FLOATS, f"{name} must be float16, bfloat16 or float32, got {t.dtype}", TypeError)


def check_same_device(ref_name: str, ref: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None:
            require(t.device == ref.device, f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_index(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    ok = isinstance(t, torch.Tensor) and tuple(t.shape) == shape and t.dtype in INDEX_DTYPES
    found = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
    require(ok, f"{name} must be an int32/int64 tensor of shape {shape}, got {found}")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    require(
        t.dim() < 2 or t.stride(-1) == 1 or t.shape[-1] == 1,
        f"{name} must have a contiguous last dim, got shape {tuple(t.shape)} strides {t.stride()}",
    )


def check_logits(logits: torch.Tensor) -> None:
    """(B, V) float logits on a device the Triton kernels can run on."""
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must be (B, V) with V > 0, got {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"logits must be float32/float16/bfloat16, got {logits.dtype}")
    if not triton_usable(logits.device.type):
        raise ValueError(f"logits are on {logits.device}: the Triton kernels need CUDA (or TRITON_INTERPRET=1)")


def check_row_param(name: str, t: torch.Tensor, logits: torch.Tensor, integer: bool = False) -> None:
    if t.shape != (logits.shape[0],):
        raise ValueError(f"{name} must be (B,) = ({logits.shape[0]},), got {tuple(t.shape)}")
    if t.device != logits.device:
        raise ValueError(f"{name} is on {t.device} but logits are on {logits.device}")
    if integer != (not t.dtype.is_floating_point and t.dtype != torch.bool):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a floating'} tensor, got {t.dtype}")
