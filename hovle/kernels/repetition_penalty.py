"""Hugging Face's repetition penalty on the tokens a sequence has seen (its prompt and its output so far).

logits: (B, V); seen: (B, V) bool; penalty: (B,) float: a seen token's positive logit is divided by the penalty,
a negative one multiplied (so both move down for penalty > 1). Returns new fp32 logits.

Kernel: elementwise over (row, vocabulary block) programs, correctly rounded division as in torch.
"""

import torch

from ._checks import check_logits, check_row_param
from ._triton import tl, triton


def repetition_penalty_ref(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    p = penalty.float()[:, None]  # (B, 1)
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


@triton.jit
def _penalty_kernel(logits_ptr, seen_ptr, penalty_ptr, out_ptr, stride_logits_b, stride_logits_v, stride_seen_b,
                    stride_seen_v, stride_penalty_b, stride_out_b, V, BLOCK_V: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = offs < V
    x = tl.load(logits_ptr + row * stride_logits_b + offs.to(tl.int64) * stride_logits_v, mask=mask).to(tl.float32)
    seen = tl.load(seen_ptr + row * stride_seen_b + offs.to(tl.int64) * stride_seen_v, mask=mask, other=0)
    p = tl.load(penalty_ptr + row * stride_penalty_b).to(tl.float32)
    penalised = tl.where(x > 0, tl.math.div_rn(x, p), x * p)  # correctly rounded, like torch's division
    tl.store(out_ptr + row * stride_out_b + offs, tl.where(seen != 0, penalised, x), mask=mask)


@torch.library.custom_op("hovle::repetition_penalty", mutates_args=())
def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Hugging Face repetition penalty on the seen tokens: positive logits / penalty, negative ones * penalty.

    logits: (B, V) fp32/fp16/bf16, any strides; seen: (B, V) bool, any strides; penalty: (B,) float.
    Returns new (B, V) fp32 logits (the reference's type promotion).
    """
    check_logits(logits)
    if seen.shape != logits.shape or seen.dtype != torch.bool or seen.device != logits.device:
        raise ValueError(
            f"seen must be a bool {tuple(logits.shape)} tensor on {logits.device}, got "
            f"{seen.dtype} {tuple(seen.shape)} on {seen.device}"
        )
    check_row_param("penalty", penalty, logits)
    b, v = logits.shape
    out = torch.empty((b, v), dtype=torch.float32, device=logits.device)
    if b == 0:
        return out
    block = min(triton.next_power_of_2(v), 2048)
    _penalty_kernel[(b, triton.cdiv(v, block))](
        logits, seen.view(torch.uint8), penalty, out,
        *logits.stride(), *seen.stride(), penalty.stride(0), out.stride(0), v,
        BLOCK_V=block, num_warps=4,
    )  # fmt: skip
    return out


@repetition_penalty.register_fake
def _(logits, seen, penalty):
    return logits.new_empty(logits.shape, dtype=torch.float32)
