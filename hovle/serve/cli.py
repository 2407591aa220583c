"""`python -m hovle serve`: its options, and starting uvicorn on the app (hovle/serve/app.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError


def add_serve_parser(sub, add_engine_options) -> None:
    serve = sub.add_parser("serve", help="serve the OpenAI chat API over HTTP (needs `pip install .[serve]`)")
    serve.add_argument("--model", default=None, help="checkpoint folder (default: the embedded default model)")
    serve.add_argument(
        "--variant",
        default="hovle",
        choices=("hovle", "hovle-hd"),
        help="which embedded default model, without --model",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-batch", type=int, default=None, help="sequences decoded together")
    serve.add_argument("--max-queue", type=int, default=256, help="requests waiting before 503s")
    serve.add_argument("--max-images-per-request", type=int, default=8)
    serve.add_argument("--max-image-bytes", type=int, default=20 << 20, help="largest encoded image accepted")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    serve.add_argument("--allowed-local-media-path", default=None, help="folder file:// image URLs may point into")
    serve.add_argument("--served-model-name", default=None, help="the model id clients ask for")
    add_engine_options(serve)


def serve(args: argparse.Namespace, make_engine) -> None:
    try:
        import uvicorn
    except ImportError as exc:
        raise InputError("serving needs the optional extra: pip install '.[serve]' (FastAPI + uvicorn)") from exc
    from ..default_model.folder import ensure_default_model
    from .app import ServerConfig, build_app

    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port}: expected 1-65535")
    for name in ("max_queue", "max_images_per_request", "max_image_bytes"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive integer")
    if args.allowed_local_media_path is not None:
        media = Path(args.allowed_local_media_path).expanduser()
        if not media.is_dir():
            raise InputError(f"--allowed-local-media-path {media}: no such folder")
        args.allowed_local_media_path = str(media.resolve())
    path = Path(args.model).expanduser() if args.model else ensure_default_model(args.variant)
    name = args.served_model_name or (path.name if args.model else f"hovle-default-{args.variant}")
    engine = make_engine(args, path, max_batch=args.max_batch, max_queue=args.max_queue)
    print(f"serving {path} as model {name!r} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(build_app(engine, ServerConfig.from_args(args, name)), host=args.host, port=args.port)
