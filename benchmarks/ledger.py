"""The decode step's ledger, computed on the CPU: every kernel one step launches at the released shapes and the
bytes each reads and writes, against the roofline's minimum (every weight the step uses and the live KV read once).

The step is the engine's own (DecodeStep.forward on the Triton op table), run on the meta device: each op gives
its output shapes and launches nothing, and a dispatch mode books every op as it goes. Bytes are DRAM traffic by
the op's access pattern: a GEMM or element-wise op reads its inputs and writes its outputs; a gather reads what it
returns, a scatter writes what it is given; the paged attention reads the live keys and values of each sequence
(not the page pool) and its split partials; the KV store writes one token per sequence. Launches: one per op that
runs a kernel (views and allocations run none), the ops with two kernels (decode attention's split and reduce,
greedy's row stats and reduce) counted twice. Per layer: the difference between the same step with one more layer
in both stacks. A GPU profile of the captured step (make gpu-check's step breakdown) is the measurement; this is
the budget it is judged by between GPU sessions.

    python benchmarks/ledger.py [--variant hovle] [--batch 1] [--context 1024] [--norm-linear separate|fused]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hovle.default_model.folder import config_dict  # noqa: E402
from hovle.families.hovle.config import HoVLEConfig  # noqa: E402
from hovle.families.hovle.model import HoVLEModel  # noqa: E402
from hovle.families.hovle.weights import UNUSED_TENSORS, expected_tensors  # noqa: E402
from hovle.kernels import get_ops  # noqa: E402
from hovle.runtime.kv_cache import PagedKVCache  # noqa: E402
from hovle.runtime.runner import ModelRunner  # noqa: E402

PAGE = 64
H200_SMS = 132  # decode attention's split count depends on the SM count: the H200's
TWO_KERNELS = {"decode_attention", "greedy"}
GATHERS = {"index.Tensor", "index_select.default", "gather.default", "embedding.default"}
NO_KERNEL = {
    "empty.memory_format",
    "empty_strided.default",
    "empty_like.default",
    "new_empty.default",
    "new_empty_strided.default",
    "lift_fresh.default",
    "_to_copy.default",
}


def _bytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


@dataclass
class Entry:
    op: str
    launches: int = 0
    calls: int = 0
    read: int = 0
    written: int = 0


@dataclass
class Ledger:
    entries: dict[str, Entry] = field(default_factory=dict)
    minimum: int = 0  # weights used + live KV read once

    def book(self, op: str, launches: int, read: int, written: int) -> None:
        e = self.entries.setdefault(op, Entry(op))
        e.launches, e.calls, e.read, e.written = e.launches + launches, e.calls + 1, e.read + read, e.written + written

    @property
    def launches(self) -> int:
        return sum(e.launches for e in self.entries.values())

    @property
    def traffic(self) -> int:
        return sum(e.read + e.written for e in self.entries.values())


class _Booking(TorchDispatchMode):
    """Books every op of the step: its launches and its DRAM bytes by access pattern."""

    def __init__(self, ledger: Ledger):
        super().__init__()
        self.ledger = ledger

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = f"{func._schema.name.split('::')[-1]}.{func._overloadname}"
        namespace = func._schema.name.split("::")[0]
        if namespace == "hovle":
            self._custom(func._schema.name.split("::")[1], args, kwargs, out)
        elif not self._free(func, name):
            self._aten(func, name, args, kwargs, out)
        return out

    @staticmethod
    def _free(func, name: str) -> bool:
        """Views, aliases and bare allocations launch nothing."""
        schema = func._schema
        view = any(r.alias_info is not None for r in schema.returns) and not schema.is_mutable
        return view or name in NO_KERNEL

    def _aten(self, func, name: str, args, kwargs, out) -> None:
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if name in GATHERS:  # reads what it returns (and the index), not the whole table
            read = sum(_bytes(t) for t in outputs) + sum(_bytes(t) for t in inputs[1:])
            self.ledger.book(name, 1, read, sum(_bytes(t) for t in outputs))
            return
        if func._schema.is_mutable:  # index_copy_ / index_put_ / fill_ / copy_: write what is given, not the target
            target, rest = inputs[0], inputs[1:]
            written = sum(_bytes(t) for t in rest[-1:]) if rest else _bytes(target)
            self.ledger.book(name, 1, sum(_bytes(t) for t in rest), min(written, _bytes(target)) or written)
            return
        self.ledger.book(name, 1, sum(_bytes(t) for t in inputs), sum(_bytes(t) for t in outputs))

    def _custom(self, op: str, args, kwargs, out) -> None:
        launches = 2 if op in TWO_KERNELS else 1
        if op == "decode_attention":
            q, k_cache, _, seq_lens, tables, _, cos, sin, max_seq_len = args
            b, hq, d = q.shape
            ctx = min(max_seq_len, tables.shape[1] * k_cache.shape[2])
            kv = 2 * b * ctx * k_cache.shape[1] * d * k_cache.element_size()  # live keys and values of each sequence
            splits = _splits(b, k_cache.shape[1], ctx)
            partials = b * hq * splits * (d + 2) * 4  # fp32 acc, m, l: written by the split kernel, read by the reduce
            read = kv + _bytes(q) + _bytes(cos) + _bytes(sin) + _bytes(seq_lens) + b * math.ceil(ctx / PAGE) * 4
            self.ledger.book(op, launches, read + partials, _bytes(out) + partials)
        elif op == "kv_store":
            k, v, *_, blocks, offsets, cos, sin = args
            rest = _bytes(blocks) + _bytes(offsets) + _bytes(cos) + _bytes(sin)
            self.ledger.book(op, launches, _bytes(k) + _bytes(v) + rest, _bytes(k) + _bytes(v))
        else:  # row-wise and GEMV-like ops: their inputs once, their outputs once
            inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            self.ledger.book(op, launches, sum(_bytes(t) for t in inputs), sum(_bytes(t) for t in outputs))


def _splits(batch: int, kv_heads: int, ctx: int) -> int:
    from hovle.kernels.decode_attention import _num_splits

    return _num_splits(batch, kv_heads, ctx, H200_SMS)


def _model(variant: str, extra_layers: int) -> HoVLEModel:
    raw = config_dict(variant, emb_layers=8 + extra_layers, llm_layers=24 + extra_layers)
    cfg = HoVLEConfig.from_dict(raw)
    weights = {
        n: torch.empty(s, dtype=torch.bfloat16, device="meta")
        for n, s in expected_tensors(cfg).items()
        if n not in UNUSED_TENSORS
    }
    return HoVLEModel(cfg, weights, get_ops("triton", "meta"))


def decode_ledger(variant: str = "hovle", batch: int = 1, context: int = 1024, extra_layers: int = 0) -> Ledger:
    """The ledger of one greedy decode step of `batch` sequences, each `context` LLM positions long (HoVLE-HD: one
    448 px tile among them, so its embedding module holds 768 positions more)."""
    model = _model(variant, extra_layers)
    cfg = model.cfg
    emb_ctx = context + (cfg.emb_tokens_per_tile - cfg.tokens_per_tile if cfg.is_hd else 0)
    pages = (math.ceil(emb_ctx / PAGE) + 1, math.ceil(context / PAGE) + 1)
    runner = ModelRunner(
        model,
        max_batch=batch,
        num_pages=(batch * pages[0] + 1, batch * pages[1] + 1),
        page_size=PAGE,
        max_pages=pages,
        cuda_graphs=False,
        vocab_limit=None,
    )
    ledger = Ledger(minimum=_minimum(model, batch, (emb_ctx, context)))
    rows = torch.arange(batch, device="meta")
    uniform = torch.empty(batch, device="meta")
    with _Booking(ledger):
        runner.decoder.forward(rows, uniform, (emb_ctx + 1, context + 1), penalty=False, greedy=True)
    return ledger


def _minimum(model: HoVLEModel, batch: int, contexts: tuple[int, int]) -> int:
    """Every weight a step uses read once (the text table: one row per sequence), and each sequence's live KV."""
    layers = [layer for stack in (model.emb_stack, model.llm_stack) for layer in stack.layers]
    weights = sum(layer.dense_bytes() for layer in layers)
    weights += _bytes(model.final_norm) + _bytes(model.head) + batch * model.text_table[0].numel() * 2
    per_token = [
        PagedKVCache.bytes_per_token(s.num_layers, s.num_kv_heads, s.head_dim, torch.bfloat16)
        for s in (model.cfg.embedding.stack, model.cfg.llm.stack)
    ]
    return weights + batch * (contexts[0] * per_token[0] + contexts[1] * per_token[1])


def launches_per_layer(variant: str = "hovle", batch: int = 1, context: int = 1024) -> float:
    """Kernels a decoder layer adds to the step (one more layer in each stack: both stacks' layers are alike)."""
    base, more = decode_ledger(variant, batch, context), decode_ledger(variant, batch, context, extra_layers=1)
    return (more.launches - base.launches) / 2


def _print(ledger: Ledger, title: str, per_layer: float) -> None:
    print(f"## {title}")
    print("| op | calls | launches | MB read | MB written |\n|---|---|---|---|---|")
    for e in sorted(ledger.entries.values(), key=lambda e: -(e.read + e.written)):
        print(f"| {e.op} | {e.calls} | {e.launches} | {e.read / 1e6:.2f} | {e.written / 1e6:.2f} |")
    ratio = ledger.traffic / ledger.minimum
    print(
        f"\nlaunches: {ledger.launches} per step, {per_layer:g} per decoder layer; traffic "
        f"{ledger.traffic / 1e9:.3f} GB = {ratio:.3f} x the minimum {ledger.minimum / 1e9:.3f} GB (weights + KV)\n"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="hovle", choices=("hovle", "hovle-hd"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--norm-linear", default="separate", choices=("separate", "fused"))
    args = p.parse_args()
    if args.batch < 1 or args.context < 1:
        p.error("--batch and --context must be positive")
    os.environ["HOVLE_CHOOSE_NORM_LINEAR"] = args.norm_linear
    ledger = decode_ledger(args.variant, args.batch, args.context)
    per_layer = launches_per_layer(args.variant, args.batch, args.context)
    _print(
        ledger,
        f"{args.variant} decode step, batch {args.batch}, context {args.context}, norm_linear {args.norm_linear}",
        per_layer,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
