"""Shared pieces of the kernel tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Fresh outputs start as NaN (integers as -7), so an element a kernel forgets to write cannot pass by luck.

    Autouse in every test module that imports it.
    """
    real_empty = torch.empty

    def empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out.fill_(-7)

    monkeypatch.setattr(torch, "empty", empty)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns, so equality is exact (NaN == NaN, -0.0 != 0.0)."""
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


GARBAGE_PAGE = 1_000_000  # table entries past a sequence's pages: far out of range, so a read of one shows


def paged_kv(lens, hkv, d, page, dtype, device, gen, poison=float("nan")):
    """Each sequence's random keys and values, dense (for the fp64 references) and scattered into shuffled pages.

    Returns (k_cache, v_cache, block_tables, dense_k, dense_v): caches (N_blocks, Hkv, page, D) in `dtype` where
    every position no sequence owns (unowned pages, the tail of each last page) holds `poison`; block_tables
    (B, max_pages + 1) int32 with GARBAGE_PAGE past each sequence's pages; dense_k[b], dense_v[b]: (Hkv, L_b, D)
    in `dtype`, exactly the values stored.
    """
    pages = [-(-n // page) for n in lens]
    total = sum(pages) + 2  # two spare pages nobody owns
    order = torch.randperm(total, generator=gen).tolist()
    k_cache = torch.full((total, hkv, page, d), poison)
    v_cache = torch.full((total, hkv, page, d), poison)
    table = torch.full((len(lens), max(pages) + 1), GARBAGE_PAGE, dtype=torch.int32)
    dense_k = [torch.randn(hkv, n, d, generator=gen).to(dtype).float() for n in lens]
    dense_v = [torch.randn(hkv, n, d, generator=gen).to(dtype).float() for n in lens]
    for b, n in enumerate(lens):
        for j in range(pages[b]):
            blk = order.pop()
            table[b, j] = blk
            k_cache[blk, :, : min(page, n - j * page)] = dense_k[b][:, j * page : (j + 1) * page]
            v_cache[blk, :, : min(page, n - j * page)] = dense_v[b][:, j * page : (j + 1) * page]
    move = lambda t: t.to(device, dtype)  # noqa: E731
    return move(k_cache), move(v_cache), table.to(device), [move(x) for x in dense_k], [move(x) for x in dense_v]


def check_graph_replay(op, args: tuple, changed, expected) -> None:
    """op(*args) captured in a CUDA graph, then `changed` (an input tensor among args) refilled in place and the
    graph replayed: its outputs must equal expected(*args) on the new input, bit for bit."""
    op(*args)  # compile and autotune outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(*args)
    changed.copy_(torch.randn_like(changed))
    graph.replay()
    for got, want in zip(out, expected(*args)):
        assert torch.equal(bits(got), bits(want))
