"""Command line: `python -m hovle {generate,demo,write-default,convert,serve}`.

Every failure the CLI can meet in its input (a bad option value, a missing or unreadable file, a checkpoint or
image it cannot use, text that is not valid Unicode) ends as one line on stderr and exit status 2; only a bug in
the engine prints a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import HoVLEError, InputError

DEMO_PROMPT = "Please describe the image in detail."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """argparse's usage errors as one line and status 2, like every other input error."""
        self.exit(2, f"error: {message} (see `python -m hovle {self.prog.split()[-1]} --help`)\n")


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "torch", "flash-attn"))
    p.add_argument("--hd-decode", default="natural", choices=("natural", "reference-quirk"))
    p.add_argument("--no-cuda-graph", action="store_true", help="decode eagerly instead of replaying CUDA graphs")
    p.add_argument(
        "--preprocess",
        default="auto",
        choices=("auto", "python", "native"),
        help="image preprocessing: native C++ (when built) or PIL",
    )
    p.add_argument("--max-tiles", type=int, default=None, help="raise the per-image tile limit (hard cap 128)")
    p.add_argument(
        "--bos-placement",
        default="per-segment",
        choices=("per-segment", "first"),
        help="XComposer2: BOS before each text piece (the authors' chat()) or only at the start",
    )


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default=DEMO_PROMPT, help="the user's question")
    p.add_argument("--image", action="append", default=None, help="an image file (repeat for several)")
    p.add_argument(
        "--max-num", type=int, default=None, help="most tiles per image (XComposer2: hd_num; default: the model's)"
    )
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="a stop string (repeat for several)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    _add_engine(p)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m hovle", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    gen = sub.add_parser("generate", help="answer a prompt about images with a checkpoint folder")
    gen.add_argument("--model", required=True, help="a checkpoint folder: HoVLE, HoVLE-HD, InternLM-XComposer2-4KHD")
    _add_sampling(gen)
    demo = sub.add_parser("demo", help="ask the embedded (trained) default model about the example image")
    demo.add_argument("--variant", default="both", choices=("hovle", "hovle-hd", "both"))
    _add_engine(demo)
    write = sub.add_parser("write-default", help="write the embedded default checkpoint to a folder")
    write.add_argument("--out", required=True, help="the folder to write (created; see --overwrite)")
    write.add_argument(
        "--variant",
        default="hovle",
        choices=("hovle", "hovle-hd", "xcomposer2-4khd"),
        help="HoVLE, HoVLE-HD, or (with --random only) InternLM-XComposer2-4KHD",
    )
    write.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    write.add_argument(
        "--random",
        action="store_true",
        help="random weights (the tiny sizes, or the real ones with --full-size) instead of the trained model",
    )
    write.add_argument(
        "--full-size", action="store_true", help="with --random: the released sizes (HoVLE ~10 GB, XComposer2 ~17 GB)"
    )
    convert = sub.add_parser("convert", help="rewrite a checkpoint's pytorch_model*.bin shards as safetensors")
    convert.add_argument("--model", required=True, help="the folder with pytorch_model.bin (or its index and shards)")
    convert.add_argument("--out", required=True, help="the new folder (the other files are copied into it)")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    from .serve.cli import add_serve_parser

    add_serve_parser(sub, _add_engine)
    return parser


def _engine(args, path, **extra):
    from .engine import Engine

    return Engine.from_pretrained(
        path,
        args.device,
        args.dtype,
        backend=args.backend,
        hd_decode=args.hd_decode,
        cuda_graphs=not args.no_cuda_graph,
        preprocess=args.preprocess,
        max_tiles=args.max_tiles,
        bos_placement=args.bos_placement,
        **extra,
    )


def _sampling(args) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=args.stop,
    )


def _show_request(engine, req) -> None:
    """The prompt as the model sees it and each image's tiling, as the model's family describes them."""
    for line in engine.builder.describe(req):
        print(line)


def _show_timings(result) -> None:
    """Token count, finish reason, time to first token (preprocessing included; shown with the image above) and,
    from two decoded tokens on, the decode rate (one token has no rate)."""
    t = result.timings
    rate = f", decode {t.decode_tok_s:.1f} tokens/s over {t.decode_tokens}" if t.decode_tokens >= 2 else ""
    print(
        f"tokens: {len(result.token_ids)} generated ({result.finish_reason}); time to first token "
        f"{t.ttft_s * 1e3:.1f} ms{rate}"
    )


def _generate(engine, args, title: str) -> None:
    """The prompt prepared once (its tiles and preprocessing time shown), then generated from."""
    images = [str(Path(i).expanduser()) for i in args.image or []]
    req = engine.prepare([{"role": "user", "content": args.prompt}], images, args.max_num)
    print(f"== {title}")
    _show_request(engine, req)
    if args.stream:
        print("output: ", end="", flush=True)
        stream = engine.generate(req, stream=True, **_sampling(args))
        for delta in stream:
            print(delta, end="", flush=True)
        print()
        result = stream.result
    else:
        result = engine.generate(req, **_sampling(args))
        print(f"output: {result.text}")
    _show_timings(result)


def _demo(engine, title: str) -> None:
    """The example image's questions, asked as one batch; each answer beside the one the scene generator knows."""
    from .default_model.folder import EXAMPLE_IMAGE, example_questions

    qa = example_questions()
    print(f"== {title}")
    _show_request(engine, engine.prepare([{"role": "user", "content": qa[0]["question"]}], [str(EXAMPLE_IMAGE)]))
    results = engine.generate([q["question"] for q in qa], [str(EXAMPLE_IMAGE)] * len(qa), max_new_tokens=48)
    for q, r in zip(qa, results):
        mark = "correct" if r.text == q["answer"] else f"WRONG, expected {q['answer']!r}"
        print(f"Q: {q['question']}\nA: {r.text}   ({mark})")
    _show_timings(results[0])


def _write_default(args) -> Path:
    from .default_model.folder import copy_default_model, write_default_model

    out = Path(args.out).expanduser()
    if args.variant == "xcomposer2-4khd":
        from .default_model.xcomposer import write_xcomposer_model

        if not args.random:
            raise InputError("there is no trained XComposer2-4KHD default model; add --random for random weights")
        return write_xcomposer_model(out, tiny=not args.full_size, overwrite=args.overwrite)
    if not args.random:
        return copy_default_model(out, args.variant, overwrite=args.overwrite)
    return write_default_model(out, args.variant, overwrite=args.overwrite, tiny=not args.full_size)


def _dispatch(args) -> None:
    from .default_model.folder import ensure_default_model

    if args.cmd == "write-default":
        print(_write_default(args))
    elif args.cmd == "convert":
        from .loaders.convert import to_safetensors

        print(to_safetensors(args.model, args.out, overwrite=args.overwrite))
    elif args.cmd == "generate":
        from .generation import SamplingParams

        SamplingParams.build(**_sampling(args))  # a bad sampling option fails before the model loads
        engine = _engine(args, Path(args.model).expanduser())
        _generate(engine, args, f"{args.model} ({engine.model_name})")
    elif args.cmd == "serve":
        from .serve.cli import serve

        serve(args, _engine)
    else:
        print("The embedded default model is a tiny HoVLE trained on generated scenes (hovle/default_model/scenes.py):")
        print("it answers questions about such pictures and knows nothing else. Point `generate --model` at real")
        print("HoVLE weights for anything else.")
        for variant in ("hovle", "hovle-hd") if args.variant == "both" else (args.variant,):
            path = ensure_default_model(variant)
            _demo(_engine(args, path), f"embedded default {variant} ({path})")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _dispatch(args)
        return 0
    except HoVLEError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:  # a file or folder the command was pointed at cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
