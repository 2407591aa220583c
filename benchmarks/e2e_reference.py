"""The Hugging Face reference providers of bench_e2e: the tests' reassembly of HoVLE from transformers' Llama
layers (bf16, SDPA attention), batch 1 (it holds one sequence), with DynamicCache (Hugging Face's default) or with
StaticCache and the decode step under torch.compile(mode="reduce-overhead") (CUDA graphs)."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.e2e_common import SCENARIOS, TEXT_PROMPT, Run, peak_gb, photo, reset_memory, sync
from hovle.families.hovle.config import HoVLEConfig
from hovle.families.hovle.request import RequestBuilder
from hovle.loaders.tokenizer import Tokenizer
from hovle.prompt import get_template


def bench_reference(model: str, path: Path, new: int, static: bool, deadline=None):
    """Yields the reference's rows one by one, as they are measured (TTFT per scenario, then batch-1 decode)."""
    import hovle.reference.model as ref_mod
    from hovle.reference.static import StaticReferenceHoVLE

    cls = StaticReferenceHoVLE if static else ref_mod.ReferenceHoVLE
    cfg = HoVLEConfig.from_dir(path)  # ids + tiles only: no weights needed for them
    prep = RequestBuilder(cfg, Tokenizer.from_dir(path), get_template(cfg.template), max(cfg.max_dynamic_patch, 1))
    reset_memory()
    t0 = time.perf_counter()
    ref = cls.from_dir(str(path), dtype=Run.dtype, device=Run.device, attn="sdpa")
    sync()
    provider = "hf-reference-static-compile" if static else "hf-reference-sdpa"
    base = {"model": model, "provider": provider, "load_s": time.perf_counter() - t0}
    _warm_up(ref, prep, static, new)  # one-time CUDA / cuBLAS set-up out of the first TTFT, as the engine's warm-up
    for name, (size, max_num) in SCENARIOS.items():
        if deadline is not None and deadline.passed():
            print(f"{provider} {model}: deadline reached before ttft_{name}", flush=True)
            return
        t1 = time.perf_counter()
        req = prep.build([{"role": "user", "content": TEXT_PROMPT}], [photo(*size)] if size else [], max_num)
        pixels = req.pixel_values.to(Run.device) if req.pixel_values is not None else None
        if static:
            ref.start(len(req.ids_emb) + new, len(req.ids_llm) + new, compile_mode=Run.compile_mode)
        else:
            ref.emb_cache, ref.llm_cache = type(ref.emb_cache)(), type(ref.llm_cache)()  # new sequence, same weights
        logits = ref.prefill(req.ids_emb, req.ids_llm, pixels)[-1]
        sync()
        yield {
            **base,
            "scenario": f"ttft_{name}",
            "batch": 1,
            "ttft_ms": (time.perf_counter() - t1) * 1e3,
            "prompt_tokens": len(req.ids_llm),
            "tiles": sum(req.tiles),
            "peak_mem_gb": peak_gb(),
        }
    if deadline is not None and deadline.passed():
        return
    tok, warm = int(logits.argmax()), 3  # the first compiled steps compile and capture: not timed
    for _ in range(warm):
        tok = int(ref.decode_step(tok).argmax())
    sync()
    t1 = time.perf_counter()
    for _ in range(new - 1 - warm):
        tok = int(ref.decode_step(tok).argmax())
    sync()
    rate = (new - 1 - warm) / (time.perf_counter() - t1)
    yield {
        **base,
        "scenario": "decode",
        "batch": 1,
        "decode_tok_s": rate,
        "decode_tok_s_total": rate,
        "new_tokens": new,
        "note": "context after the last (12-tile) scenario's prompt",
        "peak_mem_gb": peak_gb(),
    }


def _warm_up(ref, prep, static: bool, new: int) -> None:
    """A short text prefill (and decode step), untimed."""
    req = prep.build([{"role": "user", "content": TEXT_PROMPT}], [], 1)
    if static:
        ref.start(len(req.ids_emb) + new, len(req.ids_llm) + new, compile_mode=None)
    else:
        ref.emb_cache, ref.llm_cache = type(ref.emb_cache)(), type(ref.llm_cache)()
    ref.decode_step(int(ref.prefill(req.ids_emb, req.ids_llm, None)[-1].argmax()))
    sync()
