"""SwiGLU activation on the fused gate/up projection: out = silu(gate) * up.

gate_up: (T, 2I) with gate = columns [0, I) (InternLM2 w1) and up = [I, 2I) (w3). Returns (T, I).
"""

import torch
import torch.nn.functional as F


def swiglu_ref(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)
