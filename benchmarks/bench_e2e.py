"""End-to-end benchmark at full HoVLE size against the Hugging Face reference (needs a CUDA GPU).

Writes a full-size checkpoint in the released layout (real HoVLE config, F32 sharded safetensors, ~10.4 GB,
random weights; HoVLE-HD shares its shards and differs only in config.json) and measures side by side:
load time; time to first token for text only, one 448 px tile and a 12-tile (+ thumbnail) image; decode
tokens/s at several batch sizes with 256 new tokens (EOS ignored) and the achieved bandwidth
(weight bytes + KV bytes read per step) / step time as a fraction of the copy bandwidth measured in the same run;
peak GPU memory. Providers: our engine (Triton, CUDA graphs on / off) and the reference of the tests
(transformers' Llama layers, bf16, SDPA attention; batch 1 only: it holds one sequence), once with DynamicCache
(Hugging Face's default) and once with StaticCache and its decode step under torch.compile(mode="reduce-overhead").
The tokenizer is the small bundled one, so prompts are shorter than with the real tokenizer; the model sizes
(vocabulary table and output head of 92553 rows included) are the real ones.

    python benchmarks/bench_e2e.py [--dir /tmp/hovle-full] [--batches 1,8,32,64] [--new-tokens 256]

Rows go to benchmarks/results/e2e.jsonl and the console log to benchmarks/results/e2e-<date>-<commit>.log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from PIL import Image

from benchmarks.common import RESULTS, ROOT, append_rows, measured_peaks, provenance  # noqa: E402
from engine import Engine  # noqa: E402
from engine.loaders.config import HoVLEConfig  # noqa: E402
from engine.tooling.checkpoint_writer import write_checkpoint  # noqa: E402
from engine.tooling.default_model import bundled_tokenizer, config_dict, random_tensors  # noqa: E402

TEXT_PROMPT = "Summarise the main ideas of modern inference engines for vision-language models in a few sentences."


def write_full_checkpoints(root: Path) -> dict[str, Path]:
    """HoVLE (written once) and HoVLE-HD (its shards linked, its own config.json)."""
    paths = {"hovle": root / "hovle", "hovle-hd": root / "hovle-hd"}
    if not (paths["hovle"] / "config.json").is_file():
        tok, files = bundled_tokenizer()
        raw = config_dict("hovle", img_context_token_id=tok.img_context_id)
        t0 = time.perf_counter()
        write_checkpoint(paths["hovle"], raw, random_tensors(HoVLEConfig.from_dict(raw)), extra_files=files,
                         overwrite=True)  # fmt: skip
        print(f"wrote {paths['hovle']} in {time.perf_counter() - t0:.0f} s")
    hd = paths["hovle-hd"]
    if not (hd / "config.json").is_file():
        hd.mkdir(parents=True, exist_ok=True)
        for f in paths["hovle"].iterdir():
            if f.name != "config.json" and not (hd / f.name).exists():
                (hd / f.name).symlink_to(f.resolve())
        raw = json.loads((paths["hovle"] / "config.json").read_text())
        raw["embedding_config"]["pixel_shuffle_loc"] = "post"
        (hd / "config.json").write_text(json.dumps(raw, indent=2))
    return paths


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1) + rng.integers(0, 40, (height, width, 3))
    return Image.fromarray((img % 256).astype(np.uint8))


SCENARIOS = {"text": (None, 1), "one_tile": ((448, 448), 1), "max12": ((1792, 1344), 12)}


class Run:
    """Where the benchmark runs: the GPU for real measurements, or the CPU in --smoke mode (the same code paths on
    the tiny default checkpoint, in fp32 with the torch backend, nothing written) to check the script itself."""

    device, dtype, backend, compile_mode = "cuda", torch.bfloat16, "triton", "reduce-overhead"

    @classmethod
    def smoke(cls) -> None:
        cls.device, cls.dtype, cls.backend, cls.compile_mode = "cpu", torch.float32, "torch", None

    @classmethod
    def on_gpu(cls) -> bool:
        return cls.device == "cuda"


def _sync() -> None:
    if Run.on_gpu():
        torch.cuda.synchronize()


def _reset_memory() -> None:
    if Run.on_gpu():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if Run.on_gpu() else None


def _copy_gbps() -> float | None:
    return measured_peaks()["copy_gbps"] if Run.on_gpu() else None


def weight_bytes_per_step(engine: Engine) -> int:
    """Bytes of weights a decode step reads: every layer of both stacks, the final norm and the output head."""
    m, n = engine.model, 0
    for stack in (m.emb_stack, m.llm_stack):
        for layer in stack.layers:
            n += sum(t.numel() * t.element_size() for t in vars(layer).values())
    return n + m.final_norm.numel() * m.final_norm.element_size() + m.head.numel() * m.head.element_size()


def kv_bytes_per_token(engine: Engine) -> tuple[int, int]:
    cfg, item = engine.cfg, torch.finfo(engine.model.dtype).bits // 8
    per = lambda s: 2 * s.num_layers * s.num_kv_heads * s.head_dim * item  # noqa: E731 - K and V of one token
    return per(cfg.embedding.stack), per(cfg.llm.stack)


def bench_ours(model: str, path: Path, provider: str, graphs: bool, batches: list[int], new: int) -> list[dict]:
    _reset_memory()
    t0 = time.perf_counter()
    eng = Engine.from_pretrained(path, device=Run.device, dtype=Run.dtype, backend=Run.backend, cuda_graphs=graphs)
    eng.reuse_prefix = False  # every timed request prefills its whole prompt (repeated prompts would hit the cache)
    _sync()
    load_s, rows = time.perf_counter() - t0, []
    base = {"model": model, "provider": provider, "load_s": load_s}
    for name, (size, max_num) in SCENARIOS.items():
        img = photo(*size) if size else None
        eng.generate(TEXT_PROMPT, img, max_num=max_num, max_new_tokens=2)  # warm-up (autotune, graphs)
        ttfts = []
        for _ in range(3):
            r = eng.generate(TEXT_PROMPT, img, max_num=max_num, max_new_tokens=1)
            ttfts.append(r.timings.ttft_s)
        rows.append({**base, "scenario": f"ttft_{name}", "batch": 1, "ttft_ms": statistics.median(ttfts) * 1e3,
                     "prompt_tokens": r.prompt_tokens, "tiles": sum(r.tiles)})  # fmt: skip
    w_bytes, (kv_emb, kv_llm) = weight_bytes_per_step(eng), kv_bytes_per_token(eng)
    for b in batches:
        eng.generate([TEXT_PROMPT] * b, max_new_tokens=4, ignore_eos=True)  # warm-up of this bucket
        rs = eng.generate([TEXT_PROMPT] * b, max_new_tokens=new, ignore_eos=True)
        step_s = b / rs[0].timings.decode_tok_s
        ctx = rs[0].prompt_tokens + new / 2  # mean context over the decode steps
        n_emb = ctx + (len(eng.prepare([{"role": "user", "content": TEXT_PROMPT}]).ids_emb) - rs[0].prompt_tokens)
        moved = w_bytes + b * (n_emb * kv_emb + ctx * kv_llm)
        gbps = moved / step_s / 1e9
        rows.append({**base, "scenario": "decode", "batch": b, "decode_tok_s": rs[0].timings.decode_tok_s,
                     "ttft_ms": rs[0].timings.ttft_s * 1e3, "step_ms": step_s * 1e3, "gbps": gbps,
                     "bw_frac": gbps / _copy_gbps() if Run.on_gpu() else None, "new_tokens": new})  # fmt: skip
    peak = _peak_gb()
    del eng
    return [{**r, "peak_mem_gb": peak} for r in rows]


def bench_reference(model: str, path: Path, new: int, static: bool) -> list[dict]:
    """The tests' reference (transformers Llama layers, bf16, SDPA), batch 1, greedy: with DynamicCache, or with
    StaticCache and the decode step under torch.compile(mode="reduce-overhead") (CUDA graphs)."""
    sys.path.insert(0, str(ROOT))
    import tests.reference as ref_mod
    from tests.reference_static import StaticReferenceHoVLE

    ref_mod.ATTN_IMPLEMENTATION = "sdpa"
    cls = StaticReferenceHoVLE if static else ref_mod.ReferenceHoVLE
    prep = Engine.from_pretrained(path, device="cpu", dtype=torch.float32)  # tokenizer + preprocessing only
    _reset_memory()
    t0 = time.perf_counter()
    ref = cls.from_dir(str(path), dtype=Run.dtype, device=Run.device)
    _sync()
    provider = "hf-reference-static-compile" if static else "hf-reference-sdpa"
    base, rows = {"model": model, "provider": provider, "load_s": time.perf_counter() - t0}, []
    for name, (size, max_num) in SCENARIOS.items():
        t1 = time.perf_counter()
        req = prep.prepare([{"role": "user", "content": TEXT_PROMPT}], [photo(*size)] if size else [], max_num)
        pixels = req.pixel_values.to(Run.device) if req.pixel_values is not None else None
        if static:
            ref.start(len(req.ids_emb) + new, len(req.ids_llm) + new, compile_mode=Run.compile_mode)
        else:
            ref.emb_cache, ref.llm_cache = type(ref.emb_cache)(), type(ref.llm_cache)()  # new sequence, same weights
        logits = ref.prefill(req.ids_emb, req.ids_llm, pixels)[-1]
        _sync()
        rows.append({**base, "scenario": f"ttft_{name}", "batch": 1, "ttft_ms": (time.perf_counter() - t1) * 1e3,
                     "prompt_tokens": len(req.ids_llm), "tiles": sum(req.tiles)})  # fmt: skip
    tok, warm = int(logits.argmax()), 3  # the first compiled steps compile and capture: not timed
    for _ in range(warm):
        tok = int(ref.decode_step(tok).argmax())
    _sync()
    t1 = time.perf_counter()
    for _ in range(new - 1 - warm):
        tok = int(ref.decode_step(tok).argmax())
    _sync()
    rate = (new - 1 - warm) / (time.perf_counter() - t1)
    rows.append({**base, "scenario": "decode", "batch": 1, "decode_tok_s": rate, "new_tokens": new,
                 "note": "context after the last (12-tile) scenario's prompt"})  # fmt: skip
    peak = _peak_gb()
    del ref
    return [{**r, "peak_mem_gb": peak} for r in rows]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "hovle-full"))
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--models", default="hovle,hovle-hd")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--smoke", action="store_true", help="CPU check of this script on the tiny model; writes nothing")
    args = p.parse_args()
    if args.smoke:
        return smoke(args)
    if not torch.cuda.is_available():
        print("bench_e2e: no CUDA device here; this benchmark needs a GPU (nothing measured; --smoke checks it).")
        return 0
    prov = provenance()
    log = RESULTS / f"e2e-{prov['date'][:10]}-{prov['commit']}.log"
    paths = write_full_checkpoints(Path(args.dir))
    batches = [int(b) for b in args.batches.split(",")]
    peaks = measured_peaks()
    rows = []
    for model in args.models.split(","):
        rows += bench_ours(model, paths[model], "engine-triton-graphs", True, batches, args.new_tokens)
        rows += bench_ours(model, paths[model], "engine-triton-eager", False, batches, args.new_tokens)
        if not args.skip_reference:
            rows += bench_reference(model, paths[model], args.new_tokens, static=False)
            rows += bench_reference(model, paths[model], args.new_tokens, static=True)
    rows = [{**r, **peaks, **prov} for r in rows]
    append_rows(rows, "e2e.jsonl")
    with open(log, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


def smoke(args) -> int:
    """Every provider and scenario on the CPU with the tiny default model (random weights); prints, writes nothing."""
    from engine.tooling.default_model import write_default_model

    Run.smoke()
    SCENARIOS["max12"] = ((900, 700), 12)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            path = write_default_model(Path(tmp) / model, model)
            rows = bench_ours(model, path, "engine-torch-eager", False, [1, 2], 8)
            if not args.skip_reference:
                rows += bench_reference(model, path, 8, static=False)
                rows += bench_reference(model, path, 8, static=True)
            for r in rows:
                print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
