"""Row-wise argmax over the vocabulary (greedy decoding), and the row statistics `sample` builds on.

logits: (B, V) -> (B,) int64, the lowest index among the maxima, a NaN counting as the largest value (torch.argmax).

Kernel: each row is split over chunks of 4096 (many programs even at B = 1): per chunk a running per-lane max and
its index, then the lowest index among the lanes' maxima; a second kernel reduces the chunk partials per row. With
a temperature, the same pass sums exp(x/t - chunk max/t) per chunk, so `sample` gets the full-row softmax
denominator without another sweep. No host sync: capturable in a CUDA graph.
"""

import torch

from ._checks import check_logits
from ._triton import tl, triton


def greedy_ref(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax (lowest index on ties): the whole selection when every row is greedy. (B, V) -> (B,)."""
    return torch.argmax(logits, dim=-1)


@triton.jit
def _argmax_lanes(best, best_idx):
    """Lowest index among the lanes' maxima, a NaN counting as the largest value (torch.argmax)."""
    nan = best != best
    has_nan = tl.max(nan.to(tl.int32), axis=0) != 0
    top = tl.max(tl.where(nan, float("-inf"), best), axis=0)
    is_top = tl.where(has_nan, nan, best == top)
    return tl.where(has_nan, float("nan"), top), tl.min(tl.where(is_top, best_idx, 2147483647), axis=0)


@triton.jit
def _row_stats_kernel(logits_ptr, temperature_ptr, max_ptr, idx_ptr, sum_ptr, stride_logits_b, stride_logits_v, V,
                      SPLITS, CHUNK: tl.constexpr, BLOCK_V: tl.constexpr, WITH_SUM: tl.constexpr):  # fmt: skip
    """Partials of one CHUNK of one row: max, its lowest index, and sum(exp((x - max) / t)) for softmax."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    base = logits_ptr + row * stride_logits_b
    lanes = tl.arange(0, BLOCK_V)
    best = tl.full((BLOCK_V,), float("-inf"), tl.float32)
    best_idx = split * CHUNK + lanes  # an all -inf chunk resolves to its first index
    for i in tl.static_range(CHUNK // BLOCK_V):  # unrolled: every load of the chunk in flight at once
        offs = split * CHUNK + i * BLOCK_V + lanes
        x = tl.load(base + offs.to(tl.int64) * stride_logits_v, mask=offs < V, other=float("-inf")).to(tl.float32)
        take = (x > best) | ((x != x) & (best == best))  # strictly greater keeps the earlier index
        best = tl.where(take, x, best)
        best_idx = tl.where(take, offs, best_idx)
    top, top_idx = _argmax_lanes(best, best_idx)
    out = row * SPLITS + split
    tl.store(max_ptr + out, top)
    tl.store(idx_ptr + out, top_idx)
    if WITH_SUM:
        t = tl.load(temperature_ptr + row).to(tl.float32)
        t = tl.where(t > 0, t, 1.0)
        m = tl.math.div_rn(top, t)
        acc = tl.zeros((BLOCK_V,), tl.float32)
        for i in tl.static_range(CHUNK // BLOCK_V):  # the chunk again, now from L2
            offs = split * CHUNK + i * BLOCK_V + lanes
            x = tl.load(base + offs.to(tl.int64) * stride_logits_v, mask=offs < V, other=float("-inf"))
            v = tl.math.div_rn(x.to(tl.float32), t)
            acc += tl.where(v == float("-inf"), 0.0, tl.exp(v - m))
        tl.store(sum_ptr + out, tl.sum(acc, axis=0))


@triton.jit
def _row_reduce_kernel(max_ptr, idx_ptr, sum_ptr, temperature_ptr, greedy_ptr, z_ptr, SPLITS,
                       BLOCK_S: tl.constexpr, WITH_SUM: tl.constexpr):  # fmt: skip
    """Per row: the argmax over the chunk partials and the softmax denominator sum(exp(x/t - max/t))."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_S)
    mask = offs < SPLITS
    m = tl.load(max_ptr + row * SPLITS + offs, mask=mask, other=float("-inf"))
    idx = tl.load(idx_ptr + row * SPLITS + offs, mask=mask, other=2147483647)
    top, top_idx = _argmax_lanes(m, idx)  # chunk partials come in index order: ties keep the lowest
    tl.store(greedy_ptr + row, top_idx.to(tl.int64))
    if WITH_SUM:
        t = tl.load(temperature_ptr + row).to(tl.float32)
        t = tl.where(t > 0, t, 1.0)
        s = tl.load(sum_ptr + row * SPLITS + offs, mask=mask, other=0.0)
        scaled = tl.exp(tl.math.div_rn(m, t) - tl.math.div_rn(top, t))
        tl.store(z_ptr + row, tl.sum(tl.where(m == float("-inf"), 0.0, s * scaled), axis=0))


def _row_stats(logits: torch.Tensor, temperature: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax (B,) int64, softmax denominator of logits / t (B,) fp32) with each row split over many programs."""
    b, v = logits.shape
    chunk = min(4096, triton.next_power_of_2(v))
    block = min(1024, chunk)
    splits = triton.cdiv(v, chunk)
    dev = logits.device
    if b == 0:
        return torch.empty(0, dtype=torch.int64, device=dev), torch.empty(0, dtype=torch.float32, device=dev)
    part_max = torch.empty((b, splits), dtype=torch.float32, device=dev)
    part_idx = torch.empty((b, splits), dtype=torch.int32, device=dev)
    part_sum = torch.empty((b, splits), dtype=torch.float32, device=dev)
    tokens = torch.empty(b, dtype=torch.int64, device=dev)
    z = torch.empty(b, dtype=torch.float32, device=dev)
    t = part_sum if temperature is None else temperature  # unread without the sums
    with_sum = temperature is not None
    _row_stats_kernel[(b, splits)](
        logits, t, part_max, part_idx, part_sum, *logits.stride(), v, splits,
        CHUNK=chunk, BLOCK_V=block, WITH_SUM=with_sum, num_warps=4,
    )  # fmt: skip
    block_s = triton.next_power_of_2(splits)
    _row_reduce_kernel[(b,)](
        part_max, part_idx, part_sum, t, tokens, z, splits, BLOCK_S=block_s, WITH_SUM=with_sum, num_warps=1
    )  # fmt: skip
    return tokens, z


@torch.library.custom_op("hovle::greedy", mutates_args=())
def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax (lowest index on ties, NaN largest: torch.argmax). logits: (B, V) any strides -> (B,) int64.

    The greedy path of `sample`; callers that know on the host that every row is greedy can call it alone.
    """
    check_logits(logits)
    return _row_stats(logits, None)[0]


@greedy.register_fake
def _(logits):
    return logits.new_empty(logits.shape[:1], dtype=torch.int64)
