"""Command line: `python -m engine {generate,demo,write-default}`."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .errors import HoVLEError

EXAMPLE_IMAGE = Path(__file__).parent / "data" / "example.png"
DEMO_PROMPT = "Please describe the image in detail."


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default=DEMO_PROMPT, help="the user's question")
    p.add_argument("--image", action="append", default=None, help="an image file (repeat for several)")
    p.add_argument("--max-num", type=int, default=None, help="most tiles per image (default: config.json's)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="a stop string (repeat for several)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--backend", default="auto", help="kernel backend: auto, triton, torch, flash-attn")
    p.add_argument("--hd-decode", default="natural", choices=("natural", "reference-quirk"))
    p.add_argument("--no-cuda-graph", action="store_true", help="decode eagerly instead of replaying CUDA graphs")
    p.add_argument("--preprocess", default="auto", choices=("auto", "python", "native"),
                   help="image preprocessing: native C++ (when built) or PIL")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="answer a prompt about images with a checkpoint folder")
    gen.add_argument("--model", required=True, help="folder of OpenGVLab/HoVLE or HoVLE-HD (or a compatible one)")
    _add_sampling(gen)
    demo = sub.add_parser("demo", help="run the embedded default model (random weights) on the example image")
    demo.add_argument("--variant", default="both", choices=("hovle", "hovle-hd", "both"))
    _add_sampling(demo)
    write = sub.add_parser("write-default", help="write the embedded default checkpoint to a folder")
    write.add_argument("--out", required=True)
    write.add_argument("--variant", default="hovle", choices=("hovle", "hovle-hd"))
    write.add_argument("--overwrite", action="store_true")
    return parser


def _sampling(args) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed, stop=args.stop,
    )  # fmt: skip


def _show_prompt(engine, req) -> str:
    """The prompt as text, each run of image-context tokens collapsed to one marker with its count."""
    text = engine.tokenizer.decode(req.ids_llm, skip_special_tokens=False)
    ctx = "<IMG_CONTEXT>"
    return re.sub(f"(?:{re.escape(ctx)})+", lambda m: f"{ctx}x{len(m.group(0)) // len(ctx)}", text)


def _run(engine, args, title: str) -> None:
    images = args.image or []
    sampling = _sampling(args)
    req = engine.prepare([{"role": "user", "content": args.prompt}], images, args.max_num)
    print(f"== {title}")
    print(f"prompt ({len(req.ids_llm)} LLM tokens, {len(req.ids_emb)} embedding-module tokens):")
    print("  " + _show_prompt(engine, req).replace("\n", "\n  "))
    for i, (grid, n) in enumerate(zip(req.grids, req.tiles)):
        thumb = " + thumbnail" if n > grid[0] * grid[1] else ""
        print(f"image {i}: {grid[0]}x{grid[1]} grid of {engine.cfg.image_size}px tiles{thumb} = {n} tiles"
              f" (preprocessing: {', '.join(req.paths)}, {req.preprocess_s * 1e3:.1f} ms)")  # fmt: skip
    if args.stream:
        print("output: ", end="", flush=True)
        stream = engine.generate(args.prompt, images, stream=True, max_num=args.max_num, **sampling)
        for delta in stream:
            print(delta, end="", flush=True)
        print()
        result = stream.result
    else:
        result = engine.generate(args.prompt, images, max_num=args.max_num, **sampling)
        print(f"output: {result.text}")
    t = result.timings
    print(
        f"tokens: {len(result.token_ids)} generated ({result.finish_reason}); preprocess {t.preprocess_s * 1e3:.1f} ms,"
        f" time to first token {t.ttft_s * 1e3:.1f} ms, decode {t.decode_tok_s:.1f} tokens/s"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from .engine import Engine
        from .tooling.default_model import ensure_default_model, write_default_model

        if args.cmd == "write-default":
            print(write_default_model(args.out, args.variant, overwrite=args.overwrite))
            return 0
        if args.cmd == "generate":
            engine = Engine.from_pretrained(args.model, args.device, args.dtype, backend=args.backend,
                                            hd_decode=args.hd_decode, cuda_graphs=not args.no_cuda_graph,
                                            preprocess=args.preprocess)  # fmt: skip
            _run(engine, args, f"{args.model} ({'HoVLE-HD' if engine.cfg.is_hd else 'HoVLE'})")
            return 0
        args.image = args.image or [str(EXAMPLE_IMAGE)]
        print("The embedded default model has RANDOM weights: it runs the whole pipeline (tokenizer, tiling, both")
        print("stacks, KV caches, sampling) but its text is meaningless. Point `generate --model` at real weights.")
        for variant in ("hovle", "hovle-hd") if args.variant == "both" else (args.variant,):
            path = ensure_default_model(variant)
            engine = Engine.from_pretrained(path, args.device, args.dtype, backend=args.backend,
                                            hd_decode=args.hd_decode, cuda_graphs=not args.no_cuda_graph,
                                            preprocess=args.preprocess)  # fmt: skip
            _run(engine, args, f"embedded default {variant} ({path})")
        return 0
    except HoVLEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
