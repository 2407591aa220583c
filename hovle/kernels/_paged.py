"""The paged KV-cache layout every attention op reads, and the plain-PyTorch gathers of the references.

One layer's cache of one stack is k_cache, v_cache: (N_blocks, Hkv, P, D), N_blocks pages of P positions each.
Sequence b owns pages block_tables[b, 0], block_tables[b, 1], ...: its key n sits at
cache[block_tables[b, n // P], :, n % P]. The kernels never read a table entry or a position past a sequence's
length; the batched gather below reads whole pages and masks the tail, so entries and positions past the end may
hold anything (a poisoned NaN cache or garbage page ids included).
"""

from __future__ import annotations

import torch

from ._checks import check_index, require


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
    require(ok and cache.stride(-1) == 1, f"{name} must be (N_blocks, Hkv, P, D={head_dim}) {dtype} on {device} "
            f"with a contiguous last dim, got {tuple(cache.shape)} {cache.dtype} strides {cache.stride()} on "
            f"{cache.device}")  # fmt: skip


def check_block_tables(block_tables: torch.Tensor, batch: int, device: torch.device) -> None:
    require(isinstance(block_tables, torch.Tensor) and block_tables.dim() == 2,
            f"block_tables must be a (B, max_blocks) tensor, got {getattr(block_tables, 'shape', block_tables)}")
    check_index("block_tables", block_tables, (batch, block_tables.shape[1]))
    require(block_tables.device == device, f"block_tables is on {block_tables.device}, expected {device}")
    require(block_tables.stride(-1) == 1, f"block_tables must have a contiguous last dim, got {block_tables.stride()}")
