"""Causal grouped-query attention for prefill over the paged KV cache (variable lengths, packed).

    out[t, h] = softmax(scale * q[t, h] . K^T, causal) V,   K, V = keys 0 .. prefix_b + i of sequence b, head h // rep

Sequence b owns queries q[cu_seqlens[b]:cu_seqlens[b+1]] at positions prefix_lens[b] + i; they attend causally to
its keys 0 .. prefix_lens[b] + i (its cached prefix, e.g. an earlier turn or a shared image prefix, and itself),
read through its row of block_tables (hovle/kernels/_paged.py). The step's keys must already be stored (kv_store).

q: (T, Hq, D); k_cache, v_cache: (N_blocks, Hkv, P, D); cu_seqlens: (B+1,) int; prefix_lens: (B,) int;
block_tables: (B, max_blocks) int. Query head h uses kv head h // (Hq/Hkv). Softmax in fp32.
With cos, sin given (rows matching q's), q is rotated on load (rotate-half RoPE). Returns (T, Hq, D) in q's dtype.

Kernel: FlashAttention-2 (Dao, 2023) forward. One program per (query block of BLOCK_M tokens, sequence, head)
keeps its q tile in registers and streams BLOCK_N-key tiles of K and V, with an online softmax in fp32 (running
max and sum, exp2 with scale * log2(e) folded in). Key tiles wholly in the past are read unmasked; only the tiles
on the causal diagonal are masked, and tiles wholly in the future are never visited. A key tile lies inside one
page when BLOCK_N divides P (one page id per tile); otherwise each key looks its page up. q may be a strided view
(last dim contiguous) of the fused qkv projection. D is padded to a power of 2 with masks (80 -> 128). No host
syncs: the grid covers `max_seqlen` tokens (default T) and surplus blocks exit.
"""

import math

import torch
from torch import Tensor

from ._checks import require
from ._paged import check_prefill_args, sequence_kv
from ._triton import fitting_configs, tl, triton, triton_usable, tuning_configs
from .rotary import rotate_ref

_QUERY_CHUNK = 1024  # bounds the (Hq, chunk, keys) score matrix the reference materialises


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, scale: float) -> torch.Tensor:
    """q: (Hq, n, D) fp32 at absolute positions q_pos (n,); k, v: (Hq, L, D) fp32. Causal on positions."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (Hq, n, L)
    future = torch.arange(k.shape[1], device=q.device)[None, :] > q_pos[:, None]  # (n, L)
    scores = scores.masked_fill(future, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)  # (Hq, n, D)


def sequences(cu_seqlens: torch.Tensor, prefix_lens: torch.Tensor):
    """(b, start, end, prefix) of each packed sequence, read on the host (the references may sync)."""
    bounds, prefixes = cu_seqlens.tolist(), prefix_lens.tolist()
    for b, prefix in enumerate(prefixes):
        yield b, bounds[b], bounds[b + 1], prefix


def attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens: torch.Tensor,
    prefix_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float | None = None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    max_seqlen: int | None = None,  # a launch-size hint for the Triton kernel; not needed here
    new_kv: tuple | None = None,  # this forward's (k, v) when one sequence starts at 0; the spec reads the cache
) -> torch.Tensor:
    if cos is not None:
        q = rotate_ref(q, cos, sin)
    hq, d = q.shape[1], q.shape[2]
    rep = hq // k_cache.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q)
    for b, start, end, prefix in sequences(cu_seqlens, prefix_lens):
        kv_len = prefix + end - start
        k = sequence_kv(k_cache, block_tables[b], kv_len).float().repeat_interleave(rep, dim=0)  # (Hq, L, D)
        v = sequence_kv(v_cache, block_tables[b], kv_len).float().repeat_interleave(rep, dim=0)
        for c0 in range(start, end, _QUERY_CHUNK):
            c1 = min(c0 + _QUERY_CHUNK, end)
            qc = q[c0:c1].float().transpose(0, 1)  # (n, Hq, D) -> (Hq, n, D)
            q_pos = torch.arange(c0 - start, c1 - start, device=q.device) + prefix
            out[c0:c1] = _attend(qc, k, v, q_pos, scale).transpose(0, 1).to(q.dtype)  # (Hq, n, D) -> (n, Hq, D)
    return out


def _tile_configs() -> list:
    """The GPU tuning list, (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_N <= BLOCK_M keeps diagonals short."""
    shapes = [(64, 64, 4, 2), (64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3)]
    shapes += [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


def _prune(configs: list, named_args: dict, **kwargs) -> list:
    """Wide heads (D > 128) keep to score tiles of at most 64 x 64: larger ones with 256 columns spill registers."""
    small = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
    return small if kwargs["BLOCK_D"] > 128 and small else configs


def _smem(config, args: dict, consts: dict) -> int:
    """Shared memory: the q tile, and num_stages of pipelined K and V tiles."""
    m, n, d = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], consts["BLOCK_D"]
    return (m * d + config.num_stages * 2 * n * d) * args["k_ptr"].element_size()


@triton.jit
def _kv_tile(base, table_ptr, start_n, keys, kv_len, stride_n, stride_s, offs_d, PAGE: tl.constexpr,
             BLOCK_N: tl.constexpr):  # fmt: skip
    """Pointers (BLOCK_N, BLOCK_D) of keys start_n + [0, BLOCK_N) of one sequence, through its page table."""
    if PAGE % BLOCK_N == 0:  # the whole tile sits in one page
        blk = tl.load(table_ptr + start_n // PAGE).to(tl.int64)
        rows = blk * stride_n + ((start_n % PAGE) + tl.arange(0, BLOCK_N)).to(tl.int64) * stride_s
    else:  # tiles straddle pages: one page lookup per key (keys past the end read page 0, then get masked)
        blk = tl.load(table_ptr + keys // PAGE, mask=keys < kv_len, other=0).to(tl.int64)
        rows = blk * stride_n + (keys % PAGE).to(tl.int64) * stride_s
    return base + rows[:, None] + offs_d[None, :]


@triton.jit
def _attend_tiles(acc, l_i, m_i, q, k_base, v_base, table_ptr, q_pos, kv_len, lo, hi, stride_k_n, stride_k_s,
                  stride_v_n, stride_v_s, qk_scale, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr,
                  PRECISION: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr):  # fmt: skip
    """Online softmax over key tiles [lo, hi); MASKED applies the causal and kv_len masks (diagonal tiles only)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for start_n in tl.range(lo, hi, BLOCK_N):
        keys = start_n + offs_n
        k_ptrs = _kv_tile(k_base, table_ptr, start_n, keys, kv_len, stride_k_n, stride_k_s, offs_d, PAGE, BLOCK_N)
        v_ptrs = _kv_tile(v_base, table_ptr, start_n, keys, kv_len, stride_v_n, stride_v_s, offs_d, PAGE, BLOCK_N)
        if MASKED or BLOCK_D != HEAD_DIM:
            kv_mask = (keys[:, None] < kv_len) & d_ok[None, :]
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        else:  # interior tiles at a power-of-2 head dim: plain loads
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASKED:
            s = tl.where(keys[None, :] <= q_pos[:, None], s, float("-inf"))
        # Every row has seen a visible key by its first diagonal tile, so m_new is finite: no NaN from -inf - -inf.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(
    configs=tuning_configs(_tile_configs()),
    key=["HEAD_DIM", "GROUP", "PAGE", "seq_bucket"],
    prune_configs_by={"early_config_prune": fitting_configs(_smem, then=_prune)},
)
@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, out_ptr, cos_ptr, sin_ptr, cu_ptr, prefix_ptr, table_ptr,
                      stride_q_t, stride_q_h, stride_k_n, stride_k_h, stride_k_s, stride_v_n, stride_v_h, stride_v_s,
                      stride_out_t, stride_out_h, stride_cos_t, stride_sin_t, stride_table_b,
                      num_heads, seq_bucket, qk_scale,
                      HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, ROTATE: tl.constexpr, PRECISION: tl.constexpr,
                      PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr):  # fmt: skip
    # Heaviest query blocks (most keys) first, so the last wave holds the short ones.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    b = tl.program_id(1) // num_heads
    h = tl.program_id(1) % num_heads
    start = tl.load(cu_ptr + b)
    seq_len = tl.load(cu_ptr + b + 1) - start
    if pid_m * BLOCK_M >= seq_len:
        return
    prefix = tl.load(prefix_ptr + b).to(tl.int32)
    table = table_ptr + b.to(tl.int64) * stride_table_b
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = (start + offs_m).to(tl.int64)
    mask = (offs_m < seq_len)[:, None] & (offs_d < HEAD_DIM)[None, :]
    q_rows = q_ptr + rows[:, None] * stride_q_t + h * stride_q_h
    q = tl.load(q_rows + offs_d[None, :], mask=mask, other=0.0)  # (BLOCK_M, BLOCK_D)
    if ROTATE:  # q * cos + rotate_half(q) * sin in fp32, rounded to q's dtype as rotate_ref does
        first_half = offs_d < HEAD_DIM // 2
        partner = tl.where(first_half, offs_d + HEAD_DIM // 2, offs_d - HEAD_DIM // 2)
        q_partner = tl.load(q_rows + partner[None, :], mask=mask, other=0.0).to(tl.float32)
        q_half = tl.where(first_half[None, :], -q_partner, q_partner)
        cos = tl.load(cos_ptr + rows[:, None] * stride_cos_t + offs_d[None, :], mask=mask, other=0.0)
        sin = tl.load(sin_ptr + rows[:, None] * stride_sin_t + offs_d[None, :], mask=mask, other=0.0)
        q = (q.to(tl.float32) * cos.to(tl.float32) + q_half * sin.to(tl.float32)).to(q_ptr.dtype.element_ty)
    kv_head = (h // GROUP).to(tl.int64)
    k_base = k_ptr + kv_head * stride_k_h
    v_base = v_ptr + kv_head * stride_v_h
    q_pos = prefix + offs_m
    kv_len = prefix + seq_len
    first_pos = prefix + pid_m * BLOCK_M
    past_end = (first_pos + 1) // BLOCK_N * BLOCK_N  # keys [0, past_end) are visible to every query of the block
    diag_end = tl.minimum(kv_len, first_pos + BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    # fmt: off
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_base, v_base, table, q_pos, kv_len, 0, past_end,
                                  stride_k_n, stride_k_s, stride_v_n, stride_v_s, qk_scale,
                                  HEAD_DIM, False, PRECISION, PAGE, BLOCK_N, BLOCK_D)
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, k_base, v_base, table, q_pos, kv_len, past_end, diag_end,
                                  stride_k_n, stride_k_s, stride_v_n, stride_v_s, qk_scale,
                                  HEAD_DIM, True, PRECISION, PAGE, BLOCK_N, BLOCK_D)
    # fmt: on
    out = acc / l_i[:, None]
    out_ptrs = out_ptr + rows[:, None] * stride_out_t + h * stride_out_h + offs_d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


_LOG2E = 1.4426950408889634


@torch.library.custom_op("hovle::attention", mutates_args=())
def _attention_op(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    cu_seqlens: Tensor,
    prefix_lens: Tensor,
    block_tables: Tensor,
    scale: float | None,
    cos: Tensor | None,
    sin: Tensor | None,
    max_seqlen: int | None,
) -> Tensor:
    t, hq, d = q.shape
    out = torch.empty((t, hq, d), dtype=q.dtype, device=q.device)
    if t == 0:
        return out
    max_seqlen = t if max_seqlen is None else min(max_seqlen, t)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    rot_cos, rot_sin = (cos, sin) if cos is not None else (q, q)  # never read without ROTATE
    grid = lambda meta: (triton.cdiv(max_seqlen, meta["BLOCK_M"]), block_tables.shape[0] * hq)  # noqa: E731
    # fmt: off
    _attention_kernel[grid](
        q, k_cache, v_cache, out, rot_cos, rot_sin, cu_seqlens, prefix_lens, block_tables,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        rot_cos.stride(0), rot_sin.stride(0), block_tables.stride(0),
        hq, min(max(triton.next_power_of_2(max_seqlen), 128), 16384), scale * _LOG2E,
        HEAD_DIM=d, GROUP=hq // k_cache.shape[1], ROTATE=cos is not None,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", PAGE=k_cache.shape[2],
        BLOCK_D=max(16, triton.next_power_of_2(d)),
    )
    # fmt: on
    return out


@_attention_op.register_fake
def _(q, k_cache, v_cache, cu_seqlens, prefix_lens, block_tables, scale, cos, sin, max_seqlen):
    return q.new_empty(q.shape)


def attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens: torch.Tensor,
    prefix_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float | None = None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    new_kv: tuple | None = None,
) -> torch.Tensor:
    """attention_ref's contract on the Triton FlashAttention-2 kernel (no host syncs; CUDA-graph capturable).

    q: (T, Hq, D) fp16/bf16/fp32, any strides with a contiguous last dim (a view of the fused qkv output).
    k_cache, v_cache: (N_blocks, Hkv, P, D) pages, q's dtype, contiguous last dim; the step's keys already stored.
    cu_seqlens: (B+1,) int packed sequence bounds; prefix_lens: (B,) int; block_tables: (B, max_blocks) int.
    scale: float, default 1/sqrt(D). cos, sin: optional (T, D) rotate-half RoPE tables applied to q on load.
    max_seqlen: optional Python int >= the longest sequence (sizes the grid); default T, always safe.
    Returns (T, Hq, D) contiguous in q's dtype.
    """
    require(triton_usable(q.device.type), f"q is on {q.device}: Triton needs CUDA (or TRITON_INTERPRET=1 on CPU)")
    check_prefill_args(q, k_cache, v_cache, cu_seqlens, prefix_lens, block_tables, cos, sin, max_seqlen)
    return _attention_op(q, k_cache, v_cache, cu_seqlens, prefix_lens, block_tables, scale, cos, sin, max_seqlen)
