"""InternLM-XComposer2-4KHD end to end: the engine against the independent reference (hovle/reference/xcomposer.py,
transformers' CLIP and Llama layers with PLoRA, SDPA attention, DynamicCache), side by side in one run.

GPU (default): a full-size random checkpoint (~8.6 B parameters, bf16 safetensors, drawn on the GPU; the release's
sizes, the small bundled tokenizer) is written to --dir once; rows: load time; time to first token of one image at
hd_num 25 (a 1000 x 1000 photo: 5 x 5 crops, 3817 image tokens) and hd_num 55 (3840 x 1600: 5 x 11 crops, 8137
image tokens); decode tokens/s at batch 1 and 64 (every prompt with its own 1-crop image, EOS ignored, the marginal
rate of a step with every sequence running). The reference holds one sequence: TTFT and batch-1 decode.
--cpu: the tiny random model on this machine's CPU (fp32, torch backend): the same scenarios at small budgets.
--smoke: --cpu with the shortest settings, to check the script (gpu-check's rehearsal). With --record rows are
appended as measured (GPU and --smoke: e2e.jsonl, --cpu: cpu.jsonl); otherwise printed.

    python benchmarks/bench_xcomposer.py --record [--dir /tmp/hovle-xc-full] [--deadline 240]
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
from benchmarks.common import append_rows, measured_peaks, provenance  # noqa: E402
from benchmarks.e2e_common import Run, peak_gb, photo, reset_memory, sync  # noqa: E402
from hovle import Engine  # noqa: E402

MODEL = "xcomposer2-4khd"
QUESTION = "Describe the image in detail."
SHORT = 8


class Settings:
    ttft = {"hd25": ((1000, 1000), 25), "hd55": ((3840, 1600), 55)}
    batches, new = (1, 64), 128


def _deadline(seconds):
    end = None if seconds is None else time.monotonic() + seconds
    return lambda: end is not None and time.monotonic() > end


def _ttft_rows(eng: Engine, base: dict, late):
    eng.generate(QUESTION, photo(336, 336), max_num=1, max_new_tokens=2)  # warm-up (autoselect, graphs)
    for name, (size, hd) in Settings.ttft.items():
        if late():
            return
        img = photo(*size, seed=1)
        runs = [eng.generate(QUESTION, img, max_num=hd, max_new_tokens=1) for _ in range(3)]
        yield {
            **base,
            "scenario": f"ttft_{name}",
            "batch": 1,
            "prompt_tokens": runs[0].prompt_tokens,
            "ttft_ms": statistics.median(r.timings.ttft_s for r in runs) * 1e3,
            "tiles": runs[0].tiles[0],
            "peak_mem_gb": peak_gb(),
        }


def _decode_row(eng: Engine, base: dict, b: int) -> dict:
    """The marginal step time with all b sequences running: (time of new tokens - time of SHORT) / (new - SHORT)."""
    images, prompts = [photo(336, 336, seed=i) for i in range(b)], [QUESTION] * b

    def timed(tokens: int):
        sync()
        t0 = time.perf_counter()
        out = eng.generate(prompts, images, max_num=1, max_new_tokens=tokens, ignore_eos=True)
        sync()
        return time.perf_counter() - t0, out

    timed(4)
    short_s, _ = timed(SHORT)
    long_s, rs = timed(Settings.new)
    step = (long_s - short_s) / (Settings.new - SHORT)
    return {
        **base,
        "scenario": "decode",
        "batch": b,
        "decode_tok_s": 1 / step,
        "decode_tok_s_total": b / step,
        "step_ms": step * 1e3,
        "new_tokens": Settings.new,
        "prompt_tokens": rs[0].prompt_tokens,
        "graph_replays": eng.stats()["graph_replays"],
        "peak_mem_gb": peak_gb(),
    }


def bench_engine(path: Path, late):
    reset_memory()
    t0 = time.perf_counter()
    eng = Engine.from_pretrained(
        path, device=Run.device, dtype=Run.dtype, backend=Run.backend, prefix_caching=False, max_batch=64
    )
    sync()
    base = {"model": MODEL, "provider": f"engine-{Run.backend}", "load_s": time.perf_counter() - t0}
    try:
        yield from _ttft_rows(eng, base, late)
        for b in Settings.batches:
            if not late():
                yield _decode_row(eng, base, b)
    finally:
        eng.close()


def bench_reference(path: Path, late):
    from hovle.reference.xcomposer import chat_prompt, hd_transform, load_folder

    reset_memory()
    t0 = time.perf_counter()
    ref = load_folder(str(path), dtype=Run.dtype, device=Run.device, attn="sdpa")
    sync()
    base = {"model": MODEL, "provider": "hf-reference-sdpa", "load_s": time.perf_counter() - t0}
    ref.prefill(chat_prompt(QUESTION), [])  # warm-up
    for name, (size, hd) in Settings.ttft.items():
        if late():
            return
        ref.cache = type(ref.cache)()
        sync()
        t1 = time.perf_counter()
        logits = ref.prefill(chat_prompt("<ImageHere>" + QUESTION), [hd_transform(photo(*size, seed=1), hd)])
        sync()
        yield {**base, "scenario": f"ttft_{name}", "batch": 1, "ttft_ms": (time.perf_counter() - t1) * 1e3}
    if late():
        return
    tok = int(logits[-1].argmax())
    for _ in range(3):
        tok = int(ref.decode_step(tok).argmax())
    sync()
    t1 = time.perf_counter()
    for _ in range(Settings.new):
        tok = int(ref.decode_step(tok).argmax())
    sync()
    rate = Settings.new / (time.perf_counter() - t1)
    yield {**base, "scenario": "decode", "batch": 1, "decode_tok_s": rate, "decode_tok_s_total": rate}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "hovle-xc-full"))
    p.add_argument("--providers", default="engine,hf")
    p.add_argument("--deadline", type=float, default=None, help="seconds after which no new measurement starts")
    p.add_argument("--cpu", action="store_true", help="the tiny model on the CPU (rows to cpu.jsonl)")
    p.add_argument("--smoke", action="store_true", help="--cpu at the shortest settings, to check the script")
    p.add_argument("--record", action="store_true", help="append the rows to benchmarks/results/")
    args = p.parse_args()
    late = _deadline(args.deadline)
    if args.cpu or args.smoke:
        return cpu(args, late)
    if not torch.cuda.is_available():
        print("bench_xcomposer: no CUDA device here (nothing measured; --cpu measures the tiny model here)")
        return 0
    from hovle.default_model.xcomposer import write_xcomposer_model

    path = Path(args.dir)
    if not (path / "config.json").is_file():
        t0 = time.perf_counter()
        write_xcomposer_model(path, tiny=False, fmt="safetensors", device="cuda", overwrite=True)
        print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    run(path, args, "e2e.jsonl", {**measured_peaks()}, late)
    return 0


def cpu(args, late) -> int:
    from hovle.default_model.xcomposer import write_xcomposer_model

    Run.smoke()
    Settings.ttft = {"hd1": ((500, 400), 1), "hd6": ((900, 500), 6)}
    Settings.batches, Settings.new = ((1, 2), SHORT + 8) if args.smoke else ((1, 4), 64)
    with tempfile.TemporaryDirectory() as tmp:
        file = "e2e.jsonl" if args.smoke else "cpu.jsonl"  # the smoke run is the GPU run's rehearsal
        run(write_xcomposer_model(Path(tmp) / "xc"), args, file, {"threads": torch.get_num_threads()}, late)
    return 0


def run(path: Path, args, file: str, extra: dict, late) -> None:
    for provider in args.providers.split(","):
        rows = bench_engine(path, late) if provider == "engine" else bench_reference(path, late)
        for r in rows:
            r = {**r, **extra, **provenance()}
            append_rows([r], file) if args.record else print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
