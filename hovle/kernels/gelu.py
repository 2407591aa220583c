"""GELU activations of the encoder MLPs, computed in fp32 and rounded once to x's dtype.

    kind "erf":   x * 0.5 * (1 + erf(x / sqrt(2)))      nn.GELU() (DeBERTa, BERT layers, projectors)
    kind "tanh":  x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    kind "quick": x * sigmoid(1.702 x)                   CLIP's QuickGELU

x: any shape, any strides. Returns a tensor of x's shape and dtype.
"""

from __future__ import annotations

import math

import torch

KINDS = ("erf", "tanh", "quick")


def gelu_ref(x: torch.Tensor, kind: str = "erf") -> torch.Tensor:
    if kind not in KINDS:
        raise ValueError(f"gelu kind {kind!r} is not one of {KINDS}")
    xf = x.float()
    if kind == "quick":
        y = xf * torch.sigmoid(1.702 * xf)
    elif kind == "tanh":
        y = 0.5 * xf * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (xf + 0.044715 * xf.pow(3))))
    else:
        y = 0.5 * xf * (1.0 + torch.erf(xf * (1.0 / math.sqrt(2.0))))
    return y.to(x.dtype)
