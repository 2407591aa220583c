"""CPU numbers for the engine: fp32 logit error against the independent reference, and the embedded default
model's time to first token and decode tokens/s (batch 1 and 4, greedy, the bundled example image).

With --record the rows go to benchmarks/results/cpu.jsonl with device, versions, commit and date; without it they are
printed. Run: python benchmarks/bench_cpu.py [--record]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ROOT, append_rows, decode_tok_s_total, provenance  # noqa: E402
from hovle import Engine  # noqa: E402
from hovle.default_model.folder import ensure_default_model  # noqa: E402


def reference_errors() -> list[dict]:
    from hovle.default_model.cases import CASES, make_checkpoint, noise_image
    from hovle.reference.model import ReferenceHoVLE

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (variant, overrides, images, max_num, question) in CASES.items():
            path = make_checkpoint(Path(tmp), name, variant, **overrides)
            eng = Engine.from_pretrained(path, device="cpu", dtype=torch.float32, max_context=4096)
            req = eng.prepare([{"role": "user", "content": question}], [noise_image(*i) for i in images], max_num)
            ours = eng.prompt_logits(req)
            theirs = ReferenceHoVLE.from_dir(str(path)).prefill(req.ids_emb, req.ids_llm, req.pixel_values)
            err = float((ours - theirs).abs().max() / theirs.abs().max())
            rows.append({"op": "logits_vs_reference", "case": name, "tokens": len(req.ids_llm), "max_rel_err": err})
    return rows


def default_model_speed() -> list[dict]:
    rows = []
    image = ROOT / "hovle" / "data" / "example.png"
    for variant in ("hovle", "hovle-hd"):
        # whole prefills are timed: with prefix caching the repeated prompt would hit its cached pages
        eng = Engine.from_pretrained(
            ensure_default_model(variant), device="cpu", dtype=torch.float32, prefix_caching=False
        )
        for batch in (1, 4):
            prompts = ["Please describe the image in detail."] * batch
            eng.generate(prompts, [image] * batch, max_new_tokens=2)  # warm-up: this batch's caches allocated
            rs = eng.generate(prompts, [image] * batch, max_new_tokens=64, ignore_eos=True)  # exactly 64 tokens each
            t = rs[0].timings
            rows.append(
                {
                    "op": "default_model_generate",
                    "model": variant,
                    "batch": batch,
                    "tiles": rs[0].tiles[0],
                    "prompt_tokens": rs[0].prompt_tokens,
                    "ttft_ms": t.ttft_s * 1e3,
                    "decode_tok_s": t.decode_tok_s,  # one sequence's rate
                    "decode_tok_s_total": decode_tok_s_total(rs),
                    "threads": torch.get_num_threads(),
                }
            )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--record", action="store_true", help="append the rows to benchmarks/results/cpu.jsonl")
    args = p.parse_args()
    prov = provenance()
    rows = [{**r, **prov} for r in reference_errors() + default_model_speed()]
    if args.record:
        append_rows(rows, "cpu.jsonl")
    else:
        print("\n".join(json.dumps(r) for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
