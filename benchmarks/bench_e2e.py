"""End-to-end benchmark at full HoVLE size against the Hugging Face reference (needs a CUDA GPU).

Writes a full-size checkpoint in the released layout (real HoVLE config, F32 sharded safetensors, ~10.4 GB,
random weights; HoVLE-HD shares its shards and differs only in config.json) and measures side by side:
load time; time to first token for text only, one 448 px tile and a 12-tile (+ thumbnail) image; decode at several
batch sizes, every prompt holding one image (one tile), --new-tokens tokens each (EOS ignored): tokens/s per user
and in total, and the achieved bandwidth (weight bytes + KV bytes read per step) / step time as a fraction of the
copy bandwidth measured in the same run; peak GPU memory; and a per-step device-time breakdown by kernel kind
(from the profiler: a generation of N tokens minus one of 1 token, per step). Providers: our engine (Triton, CUDA
graphs on / off) and the reference of the tests (hovle/reference, see benchmarks/e2e_reference.py). The tokenizer
is the small bundled one, so prompts are shorter than with the real tokenizer; the model sizes (vocabulary table and
output head of 92553 rows included) are the real ones. With --record each row is appended to
benchmarks/results/e2e.jsonl the moment it is measured (a time-out loses only the measurement in flight), with the
engine's autoselect choices so far; --deadline stops starting new measurements once that many seconds have passed.

    python benchmarks/bench_e2e.py --record [--dir /tmp/hovle-full] [--batches 1,8,32,64,128] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_rows, decode_tok_s_total, measured_peaks, provenance  # noqa: E402
from benchmarks.e2e_common import (  # noqa: E402
    SCENARIOS,
    TEXT_PROMPT,
    Run,
    copy_gbps,
    peak_gb,
    photo,
    reset_memory,
    sync,
    write_full_checkpoints,
)
from benchmarks.e2e_reference import bench_reference  # noqa: E402
from hovle import Engine  # noqa: E402

KINDS = {
    "gemm": ("gemm", "cutlass", "cublas", "sm90_xmma", "nvjet"),
    "norm_linear": ("norm_linear",),
    "attention": ("attention",),
    "norm": ("rms_norm",),
    "swiglu": ("swiglu",),
    "kv_store": ("kv_store",),
    "select": ("row_stats", "row_reduce", "sample", "penalty", "sort", "argmax"),
    "elementwise": ("elementwise", "reduce_kernel", "index", "gather", "scatter", "cat", "fill"),
}


class Deadline:
    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() > self.end


def weight_bytes_per_step(engine: Engine) -> int:
    """Bytes of weights a decode step reads: every layer of both stacks, the final norm and the output head."""
    m, n = engine.model, 0
    for stack in (m.emb_stack, m.llm_stack):
        for layer in stack.layers:
            n += layer.dense_bytes()
    return n + m.final_norm.numel() * m.final_norm.element_size() + m.head.numel() * m.head.element_size()


def kv_bytes_per_token(engine: Engine) -> tuple[int, int]:
    cfg, item = engine.cfg, torch.finfo(engine.model.dtype).bits // 8
    per = lambda s: 2 * s.num_layers * s.num_kv_heads * s.head_dim * item  # noqa: E731 - K and V of one token
    return per(cfg.embedding.stack), per(cfg.llm.stack)


def _ttft_rows(eng: Engine, base: dict, deadline: Deadline):
    for name, (size, max_num) in SCENARIOS.items():
        if deadline.passed():
            print(f"{base['provider']} {base['model']}: deadline reached before ttft_{name}", flush=True)
            return
        img = photo(*size) if size else None
        eng.generate(TEXT_PROMPT, img, max_num=max_num, max_new_tokens=2)  # warm-up (autotune, graphs)
        runs = [eng.generate(TEXT_PROMPT, img, max_num=max_num, max_new_tokens=1) for _ in range(3)]
        yield {
            **base,
            "scenario": f"ttft_{name}",
            "batch": 1,
            "prompt_tokens": runs[0].prompt_tokens,
            "ttft_ms": statistics.median(r.timings.ttft_s for r in runs) * 1e3,
            "tiles": sum(runs[0].tiles),
        }


SHORT = 8  # new tokens of the short run that the steady decode rate is measured against


def _decode_row(eng: Engine, base: dict, b: int, new: int) -> dict:
    """Batch b, every prompt with its own one-tile image. The steady decode step is the marginal cost of a token
    with all b sequences running: (wall time of `new` tokens - wall time of SHORT tokens) / (new - SHORT), the
    batch's prefill identical in both and so taken out; `burst_tok_s_total` keeps the whole burst's rate (prefill
    chunks interleaved with the first sequences' decode steps included), as a user sending b requests at once sees
    it."""
    images = [photo(448, 448, seed=i) for i in range(b)]  # one tile each, different pixels (no prefix sharing)
    prompts = [TEXT_PROMPT] * b

    def timed(tokens: int) -> tuple[float, list]:
        sync()
        t0 = time.perf_counter()
        out = eng.generate(prompts, images, max_num=1, max_new_tokens=tokens, ignore_eos=True)
        sync()
        return time.perf_counter() - t0, out

    timed(4)  # warm-up of this bucket
    short_s, _ = timed(SHORT)
    long_s, rs = timed(new)
    step_s = (long_s - short_s) / (new - SHORT)
    ctx = rs[0].prompt_tokens + new / 2  # mean context over the decode steps
    req = eng.prepare([{"role": "user", "content": TEXT_PROMPT}], [images[0]], 1)
    n_emb = ctx + len(req.ids_emb) - len(req.ids_llm)
    kv_emb, kv_llm = kv_bytes_per_token(eng)
    gbps = (weight_bytes_per_step(eng) + b * (n_emb * kv_emb + ctx * kv_llm)) / step_s / 1e9
    return {
        **base,
        "scenario": "decode",
        "batch": b,
        "decode_tok_s": 1 / step_s,
        "decode_tok_s_total": b / step_s,
        "burst_tok_s_total": decode_tok_s_total(rs),
        "ttft_ms": statistics.median(r.timings.ttft_s for r in rs) * 1e3,
        "step_ms": step_s * 1e3,
        "gbps": gbps,
        "bw_frac": gbps / copy_gbps() if Run.on_gpu() else None,
        "new_tokens": new,
        "prompt_tokens": rs[0].prompt_tokens,
        "graph_replays": eng.stats()["graph_replays"],
    }


def _kernel_us(eng: Engine, b: int, new: int) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    images = [photo(448, 448, seed=i) for i in range(b)]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        eng.generate([TEXT_PROMPT] * b, images, max_num=1, max_new_tokens=new, ignore_eos=True)
        sync()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        kind = next((k for k, keys in KINDS.items() if any(x in e.key.lower() for x in keys)), "other")
        out[kind] = out.get(kind, 0.0) + e.device_time_total  # microseconds
    return out


def _breakdown_row(eng: Engine, base: dict, b: int, new: int) -> dict:
    """Device time per decode step by kernel kind: (profile of `new` tokens - profile of 1 token) / (new - 1)."""
    full, prefill_only = _kernel_us(eng, b, new), _kernel_us(eng, b, 1)
    per_step = {f"{k}_us": (full.get(k, 0.0) - prefill_only.get(k, 0.0)) / (new - 1) for k in full}
    return {**base, "scenario": "step_breakdown", "batch": b, **per_step, "step_device_us": sum(per_step.values())}


def bench_ours(model: str, path: Path, provider: str, graphs: bool, batches: list[int], new: int, deadline: Deadline):
    """Yields the engine's rows one by one, as they are measured."""
    reset_memory()
    t0 = time.perf_counter()
    eng = Engine.from_pretrained(
        path,
        device=Run.device,
        dtype=Run.dtype,
        backend=Run.backend,
        cuda_graphs=graphs,
        prefix_caching=False,
        max_batch=max(batches),
    )
    sync()
    base = {"model": model, "provider": provider, "load_s": time.perf_counter() - t0}
    try:
        yield from _ttft_rows(eng, base, deadline)
        for b in batches:
            if deadline.passed():
                print(f"{provider} {model}: deadline reached before batch {b}", flush=True)
                return
            yield {**_decode_row(eng, base, b, new), "peak_mem_gb": peak_gb()}
        for b in [b for b in (1, 64) if b in batches] if Run.on_gpu() and graphs else []:
            if not deadline.passed():
                yield _breakdown_row(eng, base, b, 33)
    finally:
        eng.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "hovle-full"))
    p.add_argument("--batches", default="1,8,32,64,128")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--models", default="hovle,hovle-hd")
    p.add_argument("--providers", default="graphs,eager,hf,hf-static")
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no new measurement starts")
    p.add_argument("--smoke", action="store_true", help="the same code on the CPU with the tiny model")
    p.add_argument("--record", action="store_true", help="append each row to benchmarks/results/e2e.jsonl")
    args = p.parse_args()
    if args.smoke:
        return smoke(args)
    if not torch.cuda.is_available():
        print("bench_e2e: no CUDA device here; this benchmark needs a GPU (nothing measured; --smoke checks it).")
        return 0
    paths = write_full_checkpoints(Path(args.dir))
    run_all(paths, args, measured_peaks())
    return 0


def run_all(paths: dict[str, Path], args, peaks: dict) -> None:
    """Every provider of every model, each row printed (and with --record appended) as it is measured."""
    deadline, batches = Deadline(args.deadline), [int(b) for b in args.batches.split(",")]
    for model in args.models.split(","):
        for provider in args.providers.split(","):
            if deadline.passed():
                print(f"deadline reached: {provider} {model} not run", flush=True)
                continue
            for r in _provider(provider, model, paths[model], batches, args.new_tokens, deadline):
                r = {**r, **peaks, **provenance()}
                append_rows([r], "e2e.jsonl") if args.record else print(json.dumps(r), flush=True)


def _provider(name: str, model: str, path: Path, batches: list[int], new: int, deadline: Deadline):
    if name in ("graphs", "eager"):
        tag = "engine-" + ("triton" if Run.backend == "triton" else "torch") + f"-{name}"
        return bench_ours(model, path, tag, name == "graphs", batches, new, deadline)
    return bench_reference(model, path, new, static=name == "hf-static", deadline=deadline)


def smoke(args) -> int:
    """Every provider and scenario on the CPU with the tiny default models, torch backend (the rehearsal of the GPU
    run records these rows; otherwise they are printed only)."""
    from hovle.default_model.folder import write_default_model

    Run.smoke()
    SCENARIOS["max12"] = ((900, 700), 12)
    args.batches, args.new_tokens, args.providers = "1,2", SHORT + 4, "eager,hf,hf-static"
    with tempfile.TemporaryDirectory() as tmp:
        paths = {m: write_default_model(Path(tmp) / m, m) for m in args.models.split(",")}
        run_all(paths, args, {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
