"""SwiGLU activation on the fused gate/up projection: out = silu(gate) * up.

gate_up: (T, 2I) with gate = columns [0, I) (InternLM2 w1) and up = [I, 2I) (w3), last dim contiguous (rows may be
strided). Returns a contiguous (T, I) in gate_up's dtype.

Kernel: elementwise over a 2-D grid (token, BLOCK-wide column chunk), fp32 math silu(g) * u = g / (1 + exp(-g)) * u
as the reference, one rounding at the end. Pure bandwidth: reads 2I and writes I elements per token.
"""

import torch
import torch.nn.functional as F

from ._checks import FLOATS
from ._triton import tl, triton


def swiglu_ref(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


@triton.jit
def _swiglu_kernel(
    gate_up_ptr, out_ptr,
    stride_gate_up_t, stride_out_t,
    inner,
    BLOCK: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    row = gate_up_ptr + t * stride_gate_up_t
    gate = tl.load(row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(row + inner + cols, mask=mask, other=0.0).to(tl.float32)
    out = tl.div_rn(gate, 1.0 + tl.exp(-gate)) * up  # IEEE division: Triton's default `/` is approximate
    tl.store(out_ptr + t * stride_out_t + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_config(t: int, i: int) -> dict:
    """Wide chunks (8 elements per thread) once there are enough tokens to fill the GPU; narrow ones for decode."""
    block = min(2048 if t >= 64 else 512, triton.next_power_of_2(i))
    return dict(BLOCK=block, num_warps=max(1, min(8, block // 256)))


@torch.library.custom_op("hovle::swiglu", mutates_args=())
def _swiglu_op(gate_up: torch.Tensor) -> torch.Tensor:
    t, i = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((t, i), dtype=gate_up.dtype, device=gate_up.device)
    if t == 0 or i == 0:
        return out
    cfg = _launch_config(t, i)
    grid = (t, triton.cdiv(i, cfg["BLOCK"]))
    _swiglu_kernel[grid](gate_up, out, gate_up.stride(0), out.stride(0), i, **cfg, enable_fp_fusion=False)
    return out


@_swiglu_op.register_fake
def _(gate_up):
    return gate_up.new_empty((gate_up.shape[0], gate_up.shape[1] // 2))


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up (Triton), same results as `swiglu_ref`.

    gate_up: (T, 2I) fp16/bf16/fp32, last dim contiguous. Returns (T, I) in gate_up's dtype.
    """
    if gate_up.dim() != 2 or gate_up.shape[1] % 2 != 0:
        raise ValueError(f"gate_up must be a 2-D (T, 2I) tensor, 2I even; got shape {tuple(gate_up.shape)}")
    if gate_up.dtype not in FLOATS:
        raise TypeError(f"gate_up must be fp16, bf16 or fp32; got {gate_up.dtype}")
    if gate_up.stride(-1) != 1 and gate_up.shape[1] > 1:
        raise ValueError(f"gate_up must have a contiguous last dim; got strides {gate_up.stride()}")
    return _swiglu_op(gate_up)
