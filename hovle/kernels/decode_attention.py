"""Attention of one new query per sequence over its paged KV cache (the decode step), as flash-decoding.

q: (B, Hq, D); k_cache, v_cache: (N_blocks, Hkv, P, D) pages; seq_lens: (B,) int; block_tables: (B, max_blocks)
int. Sequence b attends to its keys 0 .. seq_lens[b] - 1, read through its page-table row (hovle/kernels/_paged.py; no
causal mask needed: every cached key is in its past). Query head h uses kv head h // (Hq/Hkv). Softmax in fp32.
With cos, sin given (rows matching q's), q is rotated on load (rotate-half RoPE). Returns (B, Hq, D) in q's dtype.

    out[b, h] = softmax(scale * q[b, h] . K_b^T) V_b,   K_b = keys of sequence b, kv head h // (Hq/Hkv)

Kernel (flash-decoding, Dao et al. 2023): each sequence's keys are cut into `num_splits` chunks of whole BLOCK_N
steps; program (split, b, g) of a (num_splits, B, Hkv) grid streams its chunk of kv head g once for all Hq/Hkv query
heads of the group (padded to 16 rows for tl.dot) with an online softmax in fp32 (exp2 of log2-scaled scores; P @ V
takes P as hi + lo 16-bit halves so the weights keep ~fp32 precision), and writes unnormalised partials (running max
m, sum l, acc: fp32, (B, Hq, num_splits[, D])). A second kernel merges the splits by log-sum-exp. num_splits comes
from shapes only (B, Hkv, the SM count, and max_seq_len or the table's capacity) so a launch never reads seq_lens
on the host and can be captured in a CUDA graph; chunks past a sequence's end run no steps and weigh zero in the
merge. Keys are loaded only below seq_lens[b], so nothing past a sequence's end is ever read.
Layout: the last dim of q, the caches, cos, sin and block_tables must be contiguous (q may be a strided view of the
fused qkv output); other strides are free. seq_lens must be >= 1. Autotuned over a short BLOCK_N/warps/stages list
keyed on (D, padded group, P): the first call per key benchmarks, so warm up before capturing a CUDA graph.
"""

import functools
import math

import torch

from ._checks import require
from ._paged import check_decode_args, sequence_kv
from ._triton import fitting_configs, tl, triton, triton_usable, tuning_configs
from .attention import _kv_tile
from .rotary import rotate_ref


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float | None = None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    max_seq_len: int | None = None,  # a launch-size hint for the Triton kernel; not needed here
) -> torch.Tensor:
    if cos is not None:
        q = rotate_ref(q, cos, sin)
    b, hq, d = q.shape
    rep = hq // k_cache.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q)
    for i, n in enumerate(seq_lens.tolist()):  # one sequence at a time: only its own keys are ever read
        k = sequence_kv(k_cache, block_tables[i], n).float().repeat_interleave(rep, dim=0)  # (Hq, L, D)
        v = sequence_kv(v_cache, block_tables[i], n).float().repeat_interleave(rep, dim=0)
        scores = torch.matmul(q[i].float()[:, None, :], k.transpose(-1, -2)) * scale  # (Hq, 1, L)
        out[i] = torch.matmul(torch.softmax(scores, dim=-1), v)[:, 0].to(q.dtype)  # (Hq, 1, D) -> (Hq, D)
    return out


_LOG2E = 1.4426950408889634
_MIN_CHUNK = 128  # fewest keys worth a program of their own (64 KiB of bf16 K+V at Hkv-head granularity, D=128)
_MAX_SPLITS = 64
_PROGRAMS_PER_SM = 4  # enough programs in flight to keep HBM busy on H100/H200 without tiny chunks

# BLOCK_N keys per step; first config is the interpreter's (and a sound GPU default). K and V tiles of one stage are
# 2 * BLOCK_N * D * 2 B (32-64 KiB at D=128, bf16): num_stages keeps 1-2 of them in flight per program.
_CONFIGS = [
    triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_N": 128}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=2),  # fp32 on devices with less shared memory (128 KiB)
]


def _smem(config, args: dict, consts: dict) -> int:
    """Shared memory of the pipelined K and V tiles: num_stages x 2 x BLOCK_N x BLOCK_D elements."""
    return config.num_stages * 2 * config.kwargs["BLOCK_N"] * consts["BLOCK_D"] * args["k_ptr"].element_size()


@triton.autotune(
    configs=tuning_configs(_CONFIGS),
    key=["HEAD_DIM", "BLOCK_H", "PAGE"],
    prune_configs_by={"early_config_prune": fitting_configs(_smem)},
)
@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, lens_ptr, table_ptr, cos_ptr, sin_ptr, acc_ptr, m_ptr, l_ptr,
    stride_q_b, stride_q_h,
    stride_k_n, stride_k_h, stride_k_s,
    stride_v_n, stride_v_h, stride_v_s,
    stride_cos_b, stride_sin_b, stride_table_b,
    num_q_heads, num_splits, qk_scale,
    HEAD_DIM: tl.constexpr, REP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    ROPE: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program: split `split` of sequence b, all REP query heads of kv head g. Writes unnormalised partials."""
    split = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2).to(tl.int64)
    seq_len = tl.load(lens_ptr + b).to(tl.int32)
    table = table_ptr + b * stride_table_b
    # This sequence's own chunking (whole BLOCK_N steps): short sequences of the batch still spread over the splits,
    # and splits past its end run zero steps and leave m = -inf, l = 0, acc = 0, which the reduce weighs by zero.
    chunk = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask_h = offs_h < REP  # rows past REP pad the group to tl.dot's minimum of 16: zero queries, discarded
    mask_d = offs_d < HEAD_DIM
    heads = g * REP + offs_h  # query heads of kv group g
    mask_hd = mask_h[:, None] & mask_d[None, :]
    q_rows = q_ptr + b * stride_q_b + heads[:, None] * stride_q_h
    q = tl.load(q_rows + offs_d[None, :], mask=mask_hd, other=0.0)
    if ROPE:  # rotate-half in fp32, rounded to q's dtype exactly like rotate_ref
        half: tl.constexpr = HEAD_DIM // 2
        rot = tl.where(offs_d < half, offs_d + half, offs_d - half)
        sign = tl.where(offs_d < half, -1.0, 1.0)
        q_rot = tl.load(q_rows + rot[None, :], mask=mask_hd, other=0.0).to(tl.float32)
        cos = tl.load(cos_ptr + b * stride_cos_b + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        sin = tl.load(sin_ptr + b * stride_sin_b + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        q = (q.to(tl.float32) * cos[None, :] + q_rot * (sign * sin)[None, :]).to(q_ptr.dtype.element_ty)

    k_base = k_ptr + g * stride_k_h
    v_base = v_ptr + g * stride_v_h
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        mask_nd = mask_n[:, None] & mask_d[None, :]
        k_ptrs = _kv_tile(k_base, table, n0, offs_n, end, stride_k_n, stride_k_s, offs_d, PAGE, BLOCK_N)
        k = tl.load(k_ptrs, mask=mask_nd, other=0.0)  # (BLOCK_N, D)
        # "ieee" keeps fp32 inputs exact (no tf32); 16-bit inputs take the tensor cores either way.
        qk = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # (BLOCK_H, BLOCK_N), log2 units
        qk = tl.where(mask_n[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # finite: every step holds >= 1 key of the sequence
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = _kv_tile(v_base, table, n0, offs_n, end, stride_v_n, stride_v_s, offs_d, PAGE, BLOCK_N)
        v = tl.load(v_ptrs, mask=mask_nd, other=0.0)  # (BLOCK_N, D)
        acc = acc * alpha[:, None]
        if v.dtype == tl.float32:
            acc = tl.dot(p, v, acc, input_precision="ieee")
        else:  # p as hi + lo 16-bit halves: ~fp32 weights for one more (idle) tensor-core product
            p_hi = p.to(v.dtype)
            acc = tl.dot(p_hi, v, acc)
            acc = tl.dot((p - p_hi.to(tl.float32)).to(v.dtype), v, acc)
        m_i = m_new

    rows = (b * num_q_heads + heads) * num_splits + split  # partials are (B, Hq, num_splits[, D])
    tl.store(m_ptr + rows, m_i, mask=mask_h)
    tl.store(l_ptr + rows, l_i, mask=mask_h)
    tl.store(acc_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=mask_hd)


@triton.jit
def _decode_attention_reduce_kernel(
    acc_ptr, m_ptr, l_ptr, out_ptr,
    stride_out_b, stride_out_h,
    num_q_heads, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One program per (b, query head): log-sum-exp merge of its splits' partials."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < num_splits
    rows = (b * num_q_heads + h) * num_splits + offs_s
    m = tl.load(m_ptr + rows, mask=mask_s, other=float("-inf"))
    l_s = tl.load(l_ptr + rows, mask=mask_s, other=0.0)
    w = tl.exp2(m - tl.max(m, 0))  # empty splits (m = -inf) weigh 0
    mask = mask_s[:, None] & (offs_d < HEAD_DIM)[None, :]
    acc = tl.load(acc_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=mask, other=0.0)
    out = tl.sum(acc * w[:, None], 0) / tl.sum(l_s * w, 0)
    out_ptrs = out_ptr + b * stride_out_b + h * stride_out_h + offs_d
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


@functools.lru_cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter plays an H100, so CPU tests take the same split paths
    return torch.cuda.get_device_properties(device).multi_processor_count


def _num_splits(batch: int, kv_heads: int, max_len: int, num_sms: int) -> int:
    """Splits per sequence: ~_PROGRAMS_PER_SM programs per SM, but no chunk under _MIN_CHUNK keys."""
    want = triton.cdiv(_PROGRAMS_PER_SM * num_sms, batch * kv_heads)
    return max(1, min(want, triton.cdiv(max_len, _MIN_CHUNK), _MAX_SPLITS))


def _launch(q, k_cache, v_cache, seq_lens, block_tables, scale, cos, sin, num_splits: int, out: torch.Tensor) -> None:
    b, hq, d = q.shape
    hkv = k_cache.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    acc = torch.empty((b, hq, num_splits, d), dtype=torch.float32, device=q.device)
    m = torch.empty((b, hq, num_splits), dtype=torch.float32, device=q.device)
    l_sum = torch.empty_like(m)
    rope = cos is not None
    cos, sin = (cos, sin) if rope else (q, q)  # placeholders, never read without ROPE
    block_d = max(16, triton.next_power_of_2(d))  # tl.dot needs K >= 16
    _decode_attention_kernel[(num_splits, b, hkv)](
        q, k_cache, v_cache, seq_lens, block_tables, cos, sin, acc, m, l_sum,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        cos.stride(0), sin.stride(0), block_tables.stride(0),
        hq, num_splits, scale * _LOG2E,
        HEAD_DIM=d, REP=hq // hkv, BLOCK_H=max(16, triton.next_power_of_2(hq // hkv)), BLOCK_D=block_d, ROPE=rope,
        PAGE=k_cache.shape[2],
    )  # fmt: skip
    block_s = max(2, triton.next_power_of_2(num_splits))
    _decode_attention_reduce_kernel[(b, hq)](
        acc, m, l_sum, out, out.stride(0), out.stride(1), hq, num_splits,
        HEAD_DIM=d, BLOCK_S=block_s, BLOCK_D=block_d, num_warps=4 if block_s * block_d >= 4096 else 2,
    )  # fmt: skip


@torch.library.custom_op("hovle::decode_attention", mutates_args=())
def _decode_attention_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float | None,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    max_seq_len: int | None,
) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if q.numel() == 0:
        return out
    capacity = block_tables.shape[1] * k_cache.shape[2]
    max_len = capacity if max_seq_len is None else min(max_seq_len, capacity)
    num_splits = _num_splits(q.shape[0], k_cache.shape[1], max_len, _sm_count(q.device))
    _launch(q, k_cache, v_cache, seq_lens, block_tables, scale, cos, sin, num_splits, out)
    return out


@_decode_attention_op.register_fake
def _(q, k_cache, v_cache, seq_lens, block_tables, scale, cos, sin, max_seq_len):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float | None = None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    max_seq_len: int | None = None,
) -> torch.Tensor:
    """Flash-decoding attention; the contract of decode_attention_ref.

    q: (B, Hq, D) fp16/bf16/fp32, last dim contiguous (a strided view of the fused qkv output is fine).
    k_cache, v_cache: (N_blocks, Hkv, P, D) pages, q's dtype, last dim contiguous; Hq a multiple of Hkv.
    seq_lens: (B,) int32/int64, >= 1; block_tables: (B, max_blocks) int32/int64: sequence b reads its keys
    [0, seq_lens[b]) through row b.
    scale: softmax scale (default 1/sqrt(D)). cos, sin: optional (B, D) rotate-half RoPE tables for q.
    max_seq_len: optional Python int bound on seq_lens used only to size the split count (default: the table's);
    results stay exact if it is exceeded. Returns (B, Hq, D) in q's dtype, contiguous.
    """
    require(triton_usable(q.device.type), f"q is on {q.device}: needs CUDA (or TRITON_INTERPRET=1)")
    check_decode_args(q, k_cache, v_cache, seq_lens, block_tables, scale, cos, sin, max_seq_len)
    scale = None if scale is None else float(scale)
    return _decode_attention_op(q, k_cache, v_cache, seq_lens, block_tables, scale, cos, sin, max_seq_len)
