"""A stack of InternLM2 decoder layers over a packed batch, with its paged KV cache.

The same code runs the 8 holistic-embedding layers and the 24 LLM layers. Tokens of all sequences are packed
into one (T, C) matrix, so the projections are single GEMMs; attention separates the sequences again through
`cu_seqlens` (prefill) or per-sequence lengths (decode), and finds each sequence's keys through its page table.
Every non-GEMM op goes through the `kernels` op table.

Partial LoRA (InternLM-XComposer2): layers may carry low-rank updates of their five projections that apply to image
rows only. A forward given `lora_spans` (the image rows of the packed batch) runs those layers unfused (RMSNorm, then
the projection, then ops.lora_add on the spans); every other forward, decode steps included, runs the base weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hovle.kernels import Ops

from ..loaders.config import StackConfig
from .rope import Rope


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor  # (C,)
    wqkv: torch.Tensor  # ((Hq + 2 Hkv) D, C): all query heads, then all key heads, then all value heads
    wo: torch.Tensor  # (C, Hq D)
    ffn_norm: torch.Tensor  # (C,)
    w13: torch.Tensor  # (2I, C): gate (w1) rows, then up (w3) rows
    w2: torch.Tensor  # (C, I)
    lora: dict | None = None  # "wqkv", "wo", "w1", "w3", "w2" -> (A (r, in), B (out, r), scale): image rows only

    def dense_bytes(self) -> int:
        """Bytes of the dense weights every token reads (PLoRA's adapters touch image rows only, never decode)."""
        dense = (self.attn_norm, self.wqkv, self.wo, self.ffn_norm, self.w13, self.w2)
        return sum(t.numel() * t.element_size() for t in dense)


LORA_LINEARS = {  # PLoRA's projection -> its checkpoint name inside a layer
    "wqkv": "attention.wqkv",
    "wo": "attention.wo",
    "w1": "feed_forward.w1",
    "w3": "feed_forward.w3",
    "w2": "feed_forward.w2",
}


def layer_shapes(prefix: str, s: StackConfig, lora_ranks: dict | None = None) -> dict[str, tuple[int, ...]]:
    """The checkpoint names and shapes of a stack's InternLM2 layers: `{prefix}.{i}.attention.wqkv.weight`, ...;
    with lora_ranks (projection -> rank) also each projection's `Plora_A.weight` (r, in) and `Plora_B.weight`."""
    c, i = s.hidden_size, s.intermediate_size
    per_layer = {
        "attention.wqkv.weight": (s.qkv_size, c),  # (H + 2*Hkv) * D rows, grouped per kv head (see take_layer)
        "attention.wo.weight": (c, s.num_heads * s.head_dim),
        "feed_forward.w1.weight": (i, c),
        "feed_forward.w3.weight": (i, c),
        "feed_forward.w2.weight": (c, i),
        "attention_norm.weight": (c,),
        "ffn_norm.weight": (c,),
    }
    for short, r in (lora_ranks or {}).items():
        out_dim, in_dim = per_layer[LORA_LINEARS[short] + ".weight"]
        per_layer[f"{LORA_LINEARS[short]}.Plora_A.weight"] = (r, in_dim)
        per_layer[f"{LORA_LINEARS[short]}.Plora_B.weight"] = (out_dim, r)
    return {f"{prefix}.{n}.{key}": shape for n in range(s.num_layers) for key, shape in per_layer.items()}


def _ungroup_qkv(fused: torch.Tensor, cfg: StackConfig) -> torch.Tensor:
    """wqkv's output rows, grouped per kv head in the checkpoint (rep queries, key, value), reordered to all query
    heads, then all key heads, then all value heads."""
    hkv, d = cfg.num_kv_heads, cfg.head_dim
    rep = cfg.num_heads // hkv
    groups = fused.view(hkv, rep + 2, d, fused.shape[-1])  # ((H + 2 Hkv) D, K) -> (Hkv, rep + 2, D, K)
    return torch.cat(
        (
            groups[:, :rep].reshape(hkv * rep * d, -1),  # query head g*rep + j, as the reference numbers them
            groups[:, rep].reshape(hkv * d, -1),
            groups[:, rep + 1].reshape(hkv * d, -1),
        )
    )


def take_layer(
    raw: dict[str, torch.Tensor], prefix: str, cfg: StackConfig, lora_scales: dict | None = None
) -> LayerWeights:
    """Moves one layer's tensors out of `raw` (so memory is freed as we go) into the engine's fused layout; with
    lora_scales (projection -> scale) also its PLoRA pairs (wqkv's B rows regrouped as wqkv's own)."""
    lora = None
    if lora_scales:
        lora = {}
        for short, scale in lora_scales.items():
            a = raw.pop(f"{prefix}{LORA_LINEARS[short]}.Plora_A.weight")
            b = raw.pop(f"{prefix}{LORA_LINEARS[short]}.Plora_B.weight")
            lora[short] = (a, _ungroup_qkv(b, cfg) if short == "wqkv" else b, scale)
    w13 = torch.cat((raw.pop(prefix + "feed_forward.w1.weight"), raw.pop(prefix + "feed_forward.w3.weight")))
    return LayerWeights(
        attn_norm=raw.pop(prefix + "attention_norm.weight"),
        wqkv=_ungroup_qkv(raw.pop(prefix + "attention.wqkv.weight"), cfg),
        wo=raw.pop(prefix + "attention.wo.weight"),
        ffn_norm=raw.pop(prefix + "ffn_norm.weight"),
        w13=w13,
        w2=raw.pop(prefix + "feed_forward.w2.weight"),
        lora=lora,
    )


@dataclass
class StackBatch:
    """Where each token of one forward sits: rotary tables, the page slot its keys go to, attention extents."""

    cos: torch.Tensor  # (T, D)
    sin: torch.Tensor  # (T, D)
    token_blocks: torch.Tensor  # (T,) page each token's key and value are stored in
    token_offsets: torch.Tensor  # (T,) position inside that page
    block_tables: torch.Tensor  # (B, max_pages) int32: each sequence's pages
    cu_seqlens: torch.Tensor | None  # (B+1,) int32 boundaries of the packed sequences (prefill)
    prefix_lens: torch.Tensor | None  # (B,) keys already cached before this forward (prefill)
    kv_lens: torch.Tensor | None  # (B,) keys each sequence attends to (decode)
    decode: bool  # one token per sequence: use the decode-attention op
    max_new: int  # longest sequence of this forward (launch-size hint, known on the host)
    max_kv: int  # most keys any sequence attends to (launch-size hint; a true bound)
    store: bool = True  # False: attend to the cache without writing this forward's keys (HD reference quirk)
    fresh: bool = False  # one sequence from position 0: this forward's keys are all of its keys


def prefill_batch(
    rope: Rope,
    pages: list[list[int]],
    starts: list[int],
    lens: list[int],
    rope_lens: list[int],
    page: int,
    dtype: torch.dtype,
    device: torch.device,
) -> StackBatch:
    """Sequences adding tokens [starts[b], starts[b] + lens[b]) on top of their cached prefix; `pages[b]` lists
    sequence b's pages (covering at least starts[b] + lens[b] positions). rope_lens[b]: the kv length the
    sequence's rotary tables are computed for (its whole prompt, so that chunked prefill rotates as one forward)."""
    positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lens)])
    width = max(len(p) for p in pages)
    table = torch.tensor([p + [0] * (width - len(p)) for p in pages], dtype=torch.int32)  # (B, max_pages)
    seq_of_token = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    cos, sin = rope.cos_sin(positions, torch.repeat_interleave(torch.tensor(rope_lens), torch.tensor(lens)), dtype)
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lens), 0)
    to = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return StackBatch(
        cos=cos,
        sin=sin,
        token_blocks=to(table[seq_of_token, positions // page].long()),
        token_offsets=to(positions % page),
        block_tables=to(table),
        cu_seqlens=to(cu),
        prefix_lens=to(torch.tensor(starts)),
        kv_lens=None,
        decode=False,
        max_new=max(lens),
        max_kv=max(s + n for s, n in zip(starts, lens)),
        fresh=len(lens) == 1 and starts[0] == 0,
    )


def decode_batch(
    rope: Rope,
    tables: torch.Tensor,
    positions: torch.Tensor,
    kv_lens: torch.Tensor,
    page: int,
    dtype: torch.dtype,
    max_kv: int,
    store: bool = True,
) -> StackBatch:
    """Metadata of one decode step from device tensors only (no host reads: CUDA-graph capturable).

    tables: (B, max_pages) int32; positions, kv_lens: (B,) int64. Each sequence stores its token at `positions`
    (when `store`) and attends to `kv_lens` keys; `max_kv` is a host-side bound on kv_lens.
    """
    cos, sin = rope.cos_sin(positions, kv_lens, dtype)
    blocks = tables.gather(1, (positions // page)[:, None])[:, 0].long()  # (B,) the page holding each position
    return StackBatch(
        cos=cos,
        sin=sin,
        token_blocks=blocks,
        token_offsets=positions % page,
        block_tables=tables,
        cu_seqlens=None,
        prefix_lens=None,
        kv_lens=kv_lens,
        decode=True,
        max_new=1,
        max_kv=max_kv,
        store=store,
    )


class DecoderStack:
    """InternLM2 layers: x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x)), with the residual add fused into the norm."""

    def __init__(self, cfg: StackConfig, layers: list[LayerWeights], ops: Ops):
        self.cfg, self.layers, self.ops = cfg, layers, ops
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim

    def forward(
        self,
        x: torch.Tensor,
        batch: StackBatch,
        cache,
        final_norm: torch.Tensor | None = None,
        head: torch.Tensor | None = None,
        lora_spans: list[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        """x: (T, C). Returns the residual stream after the last layer; with `final_norm` its RMSNorm; with `head`
        too, the logits (T, V) in the activation dtype. Each pre-norm goes with the projection after it (and the
        SwiGLU after the gate/up projection) into ops.norm_linear, which backends may fuse. lora_spans: the rows
        [s, e) of x that get the layers' PLoRA updates (then those layers run unfused)."""
        eps, residual, h = self.cfg.rms_norm_eps, None, x
        for i, layer in enumerate(self.layers):
            if layer.lora and lora_spans:
                h, residual = self._lora_layer(h, residual, i, layer, batch, cache, lora_spans)
                continue
            qkv, residual = self.ops.norm_linear(h, residual, layer.attn_norm, eps, layer.wqkv)
            h = self._attention(qkv, i, layer, batch, cache)
            act, residual = self.ops.norm_linear(h, residual, layer.ffn_norm, eps, layer.w13, True)
            h = F.linear(act, layer.w2)
        if head is not None:
            return self.ops.norm_linear(h, residual, final_norm, eps, head)[0]
        if final_norm is not None:
            return self.ops.rms_norm(h, final_norm, eps, residual)[0]
        return residual + h

    def _lora_layer(self, h, residual, i: int, layer: LayerWeights, batch: StackBatch, cache, spans):
        """One layer with PLoRA on the rows in `spans`: y = x W^T everywhere, += scale (x A^T) B^T on those rows."""
        eps, lora, add = self.cfg.rms_norm_eps, layer.lora, self.ops.lora_add
        normed, residual = self.ops.rms_norm(h, layer.attn_norm, eps, residual)
        qkv = add(F.linear(normed, layer.wqkv), normed, *lora["wqkv"], spans)
        o = self._attention(qkv, i, layer, batch, cache, lora["wo"], spans)
        normed, residual = self.ops.rms_norm(o, layer.ffn_norm, eps, residual)
        gate_up = F.linear(normed, layer.w13)  # (T, 2I): gate columns, then up columns
        inner = gate_up.shape[1] // 2
        add(gate_up[:, :inner], normed, *lora["w1"], spans)
        add(gate_up[:, inner:], normed, *lora["w3"], spans)
        act = self.ops.swiglu(gate_up)
        return add(F.linear(act, layer.w2), act, *lora["w2"], spans), residual

    def _attention(
        self, qkv: torch.Tensor, i: int, layer: LayerWeights, b: StackBatch, cache, wo_lora=None, spans=None
    ) -> torch.Tensor:
        """qkv: (T, (Hq + 2 Hkv) D), the fused projection's output -> the attention block's output (T, C)."""
        t, d = qkv.shape[0], self.cfg.head_dim
        q = qkv[:, : self.q_size].view(t, -1, d)  # (T, Hq, D), a strided view
        k = qkv[:, self.q_size : self.q_size + self.kv_size].view(t, -1, d)  # (T, Hkv, D)
        v = qkv[:, self.q_size + self.kv_size :].view(t, -1, d)  # (T, Hkv, D)
        k_cache, v_cache = cache.k[i], cache.v[i]
        # RoPE is applied inside the store (k) and the attention (q): no separate rotary pass over q and k.
        if b.store:
            self.ops.kv_store(k, v, k_cache, v_cache, b.token_blocks, b.token_offsets, b.cos, b.sin)
        if b.decode:
            o = self.ops.decode_attention(
                q, k_cache, v_cache, b.kv_lens, b.block_tables, cos=b.cos, sin=b.sin, max_seq_len=b.max_kv
            )
        else:
            o = self.ops.attention(
                q,
                k_cache,
                v_cache,
                b.cu_seqlens,
                b.prefix_lens,
                b.block_tables,
                cos=b.cos,
                sin=b.sin,
                max_seqlen=b.max_new,
                new_kv=(k, v) if b.fresh else None,
            )
        o = o.reshape(t, self.q_size)  # (T, Hq, D) -> (T, Hq D)
        out = F.linear(o, layer.wo)
        return out if wo_lora is None else self.ops.lora_add(out, o, *wo_lora, spans)
