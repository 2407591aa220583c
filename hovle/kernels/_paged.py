"""The paged KV-cache layout every attention op reads: the plain-PyTorch gathers of the references, and the argument
contracts every implementation (Triton, flash-attn) checks.

One layer's cache of one stack is k_cache, v_cache: (N_blocks, Hkv, P, D), N_blocks pages of P positions each.
Sequence b owns pages block_tables[b, 0], block_tables[b, 1], ...: its key n sits at
cache[block_tables[b, n // P], :, n % P]. The kernels never read a table entry or a position past a sequence's
length; the batched gather below reads whole pages and masks the tail, so entries and positions past the end may
hold anything (a poisoned NaN cache or garbage page ids included).
"""

from __future__ import annotations

import numbers

import torch

from ._checks import FLOATS, check_index, check_same_device, require


def pages_for(length: int, page: int) -> int:
    return -(-length // page)


def sequence_kv(cache: torch.Tensor, table_row: torch.Tensor, length: int) -> torch.Tensor:
    """(N_blocks, Hkv, P, D) cache, one sequence's (max_blocks,) table row -> its first `length` keys (Hkv, L, D)."""
    page = cache.shape[2]
    blocks = cache[table_row[: pages_for(length, page)].long()]  # (n, Hkv, P, D)
    n, hkv, _, d = blocks.shape
    return blocks.transpose(0, 1).reshape(hkv, n * page, d)[:, :length]  # (Hkv, n, P, D) -> (Hkv, n*P, D)


def batch_kv(cache: torch.Tensor, block_tables: torch.Tensor, length: int) -> torch.Tensor:
    """(B, Hkv, n*P, D) with n*P >= length: each row's first pages, read with no host sync.

    Table entries past a row's own pages are clamped into range (their keys must be masked by the caller)."""
    page, num_blocks = cache.shape[2], cache.shape[0]
    table = block_tables[:, : pages_for(length, page)].long().clamp(0, num_blocks - 1)  # (B, n)
    blocks = cache[table]  # (B, n, Hkv, P, D)
    b, n, hkv, _, d = blocks.shape
    return blocks.transpose(1, 2).reshape(b, hkv, n * page, d)  # (B, Hkv, n, P, D) -> (B, Hkv, n*P, D)


def check_cache(name: str, cache: torch.Tensor, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
    ok = cache.dim() == 4 and cache.shape[3] == head_dim and cache.dtype == dtype and cache.device == device
    require(
        ok and cache.stride(-1) == 1,
        f"{name} must be (N_blocks, Hkv, P, D={head_dim}) {dtype} on {device} "
        f"with a contiguous last dim, got {tuple(cache.shape)} {cache.dtype} strides {cache.stride()} on "
        f"{cache.device}",
    )


def check_block_tables(block_tables: torch.Tensor, batch: int, device: torch.device) -> None:
    require(
        isinstance(block_tables, torch.Tensor) and block_tables.dim() == 2,
        f"block_tables must be a (B, max_blocks) tensor, got {getattr(block_tables, 'shape', block_tables)}",
    )
    check_index("block_tables", block_tables, (batch, block_tables.shape[1]))
    require(block_tables.device == device, f"block_tables is on {block_tables.device}, expected {device}")
    require(block_tables.stride(-1) == 1, f"block_tables must have a contiguous last dim, got {block_tables.stride()}")


def check_prefill_args(q, k_cache, v_cache, cu_seqlens, prefix_lens, block_tables, cos, sin, max_seqlen) -> None:
    """The contract of every prefill-attention implementation (the Triton launcher and the flash-attn adapter)."""
    require(
        q.dim() == 3 and q.dtype in FLOATS and q.stride(-1) == 1,
        f"q must be (T, Hq, D) fp16/bf16/fp32 with "
        f"a contiguous last dim, got {tuple(q.shape)} {q.dtype} strides {q.stride()}",
    )
    t, hq, d = q.shape
    require(d <= 256, f"q's head_dim D={d} is above the supported 256")
    check_cache("k_cache", k_cache, d, q.dtype, q.device)
    check_cache("v_cache", v_cache, d, q.dtype, q.device)
    require(
        v_cache.shape == k_cache.shape and hq % k_cache.shape[1] == 0,
        f"v_cache {tuple(v_cache.shape)} must match k_cache {tuple(k_cache.shape)}, whose heads must divide Hq={hq}",
    )
    b = block_tables.shape[0] if isinstance(block_tables, torch.Tensor) and block_tables.dim() == 2 else -1
    check_block_tables(block_tables, b, q.device)
    check_index("cu_seqlens", cu_seqlens, (b + 1,))
    check_index("prefix_lens", prefix_lens, (b,))
    check_same_device("q", q, cu_seqlens=cu_seqlens, prefix_lens=prefix_lens, cos=cos, sin=sin)
    require(
        (cos is None) == (sin is None),
        f"cos and sin go together, got cos={type(cos).__name__}, sin={type(sin).__name__}",
    )
    for name, x in (("cos", cos), ("sin", sin)) if cos is not None else ():
        ok = x.shape == (t, d) and x.stride(-1) == 1 and d % 2 == 0
        require(
            ok,
            f"{name} must be (T={t}, D={d}) with even D and contiguous rows, got {tuple(x.shape)} strides {x.stride()}",
        )
    ok = max_seqlen is None or (type(max_seqlen) is int and max_seqlen >= 1)
    require(ok, f"max_seqlen must be a positive Python int (the longest sequence's length), got {max_seqlen!r}")


def check_decode_args(q, k_cache, v_cache, seq_lens, block_tables, scale, cos, sin, max_seq_len) -> None:
    """The contract of every decode-attention implementation (the Triton launcher and the flash-attn adapter)."""
    require(
        isinstance(q, torch.Tensor) and q.dtype in FLOATS,
        f"q must be a float16/bfloat16/float32 tensor, got {getattr(q, 'dtype', type(q).__name__)}",
        TypeError,
    )
    require(
        q.dim() == 3 and q.stride(-1) == 1,
        f"q must be (B, Hq, D) with a contiguous last dim, got shape {tuple(q.shape)} strides {q.stride()}",
    )
    b, hq, d = q.shape
    require(d <= 256, f"head dim D={d} is above the supported 256")
    check_cache("k_cache", k_cache, d, q.dtype, q.device)
    check_cache("v_cache", v_cache, d, q.dtype, q.device)
    require(v_cache.shape == k_cache.shape, f"v_cache shape {tuple(v_cache.shape)} != k_cache's {tuple(k_cache.shape)}")
    require(hq % k_cache.shape[1] == 0, f"q heads ({hq}) must be a multiple of k_cache heads ({k_cache.shape[1]})")
    check_index("seq_lens", seq_lens, (b,))
    check_block_tables(block_tables, b, q.device)
    check_same_device("q", q, seq_lens=seq_lens, cos=cos, sin=sin)
    require((cos is None) == (sin is None), "cos and sin must be given together (or both None)")
    if cos is not None:
        ok = cos.shape == (b, d) and sin.shape == (b, d) and d % 2 == 0 and cos.stride(-1) == sin.stride(-1) == 1
        require(
            ok,
            f"cos, sin must be (B={b}, D={d}) with contiguous rows, D even; got {tuple(cos.shape)}, {tuple(sin.shape)}",
        )
    ok = scale is None or (isinstance(scale, numbers.Real) and not isinstance(scale, bool))
    require(ok, f"scale must be a float or None, got {scale!r}", TypeError)
    ok = max_seq_len is None or (type(max_seq_len) is int and max_seq_len >= 1)
    require(ok, f"max_seq_len must be a positive Python int or None, got {max_seq_len!r}")
