"""Shared pieces of the kernel tests: exact comparison, paged caches with poisoned gaps, the inputs and fp64 references
of the attention ops, CUDA-graph replay checks."""

import math

import torch

from tests.support import kernel_device


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


def _rotate64(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.double()[:, None] + rotated * sin.double()[:, None]


def attention_fp64(q, dense_k, dense_v, cu_seqlens, prefix_lens, cos=None, sin=None) -> torch.Tensor:
    """The same math in float64 from each sequence's dense keys (query chunks bound the score matrix)."""
    q = q.double() if cos is None else _rotate64(q.double(), cos, sin)
    rep, scale = q.shape[1] // dense_k[0].shape[0], 1.0 / math.sqrt(q.shape[2])
    out = torch.empty_like(q)
    bounds, prefixes = cu_seqlens.tolist(), prefix_lens.tolist()
    for b, (dk, dv) in enumerate(zip(dense_k, dense_v)):
        start, end, prefix = bounds[b], bounds[b + 1], prefixes[b]
        k = dk.double().repeat_interleave(rep, 0)  # (Hq, L, D)
        v = dv.double().repeat_interleave(rep, 0)
        for c0 in range(start, end, 1024):
            c1 = min(c0 + 1024, end)
            scores = q[c0:c1].transpose(0, 1) @ k.transpose(1, 2) * scale  # (Hq, n, L)
            pos = prefix + torch.arange(c0 - start, c1 - start, device=q.device)
            scores.masked_fill_(torch.arange(k.shape[1], device=q.device)[None, :] > pos[:, None], float("-inf"))
            out[c0:c1] = (scores.softmax(-1) @ v).transpose(0, 1)  # (Hq, n, D) -> (n, Hq, D)
    return out


def attention_inputs(lens, prefixes, hq, hkv, d, dtype, rope, device=None, seed=0, page=16, poison=float("nan")):
    """q as a strided view of a fused qkv matrix, paged caches holding prefix + n keys per sequence, RoPE tables.

    Returns ((q, k_cache, v_cache, cu_seqlens, prefix_lens, block_tables, cos, sin), (dense_k, dense_v))."""
    device = device or kernel_device()
    gen = torch.Generator().manual_seed(seed)
    b, t = len(lens), sum(lens)
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=gen)
    q = qkv.to(device, dtype)[:, : hq * d].view(t, hq, d)  # (T, Hq, D), row stride (Hq + 2 Hkv) D
    kv_lens = [p + n for p, n in zip(prefixes, lens)]
    k_cache, v_cache, tables, dense_k, dense_v = paged_kv(kv_lens, hkv, d, page, dtype, device, gen, poison)
    cu = torch.zeros(b + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lens), 0)
    cos = sin = None
    if rope:
        pos = torch.cat([torch.arange(p, p + n) for p, n in zip(prefixes, lens)]).double()
        freqs = pos[:, None] * 10000.0 ** (-torch.arange(0, d, 2).double() / d)  # (T, D/2)
        angles = torch.cat((freqs, freqs), -1)  # (T, D)
        cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)
    args = (q, k_cache, v_cache, cu.to(device), torch.tensor(prefixes).to(device), tables, cos, sin)
    return args, (dense_k, dense_v)


def decode_attention_fp64(q, dense_k, dense_v, cos=None, sin=None) -> torch.Tensor:
    """The same math as decode_attention_ref in float64 from each sequence's dense keys (no padding, no mask)."""
    q = q.double()
    if cos is not None:
        half = q.shape[-1] // 2
        rotated = torch.cat((-q[..., half:], q[..., :half]), dim=-1)
        q = q * cos.double()[:, None] + rotated * sin.double()[:, None]
    rep, scale = q.shape[1] // dense_k[0].shape[0], 1.0 / math.sqrt(q.shape[2])
    out = torch.empty_like(q)
    for b, (dk, dv) in enumerate(zip(dense_k, dense_v)):
        k = dk.double().repeat_interleave(rep, 0)  # (Hkv, L, D) -> (Hq, L, D)
        v = dv.double().repeat_interleave(rep, 0)
        scores = (q[b, :, None, :] @ k.transpose(1, 2)) * scale  # (Hq, 1, L)
        out[b] = (scores.softmax(-1) @ v)[:, 0]  # (Hq, 1, D) -> (Hq, D)
    return out


def decode_inputs(lens, hq, hkv, d, dtype, rope, device=None, seed=0, page=16, poison=float("nan")):
    """q as a strided view of a fused qkv row, paged caches with garbage past each sequence, RoPE tables at each last
    position. Returns ((q, k_cache, v_cache, seq_lens, block_tables, cos, sin), (dense_k, dense_v))."""
    device = device or kernel_device()
    gen = torch.Generator().manual_seed(seed)
    b = len(lens)
    qkv = torch.randn(b, (hq + 2 * hkv) * d, generator=gen).to(device, dtype)
    q = qkv[:, : hq * d].view(b, hq, d)  # (B, Hq, D), row stride (Hq + 2 Hkv) D
    k_cache, v_cache, tables, dense_k, dense_v = paged_kv(lens, hkv, d, page, dtype, device, gen, poison)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    cos = sin = None
    if rope:
        pos = torch.tensor(lens, dtype=torch.float64) - 1
        freqs = pos[:, None] * 10000.0 ** (-torch.arange(0, d, 2).double() / d)  # (B, D/2)
        angles = torch.cat((freqs, freqs), -1)  # (B, D)
        cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)
    return (q, k_cache, v_cache, seq_lens, tables, cos, sin), (dense_k, dense_v)
