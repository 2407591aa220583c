"""Serving load generator: the OpenAI API under a concurrency sweep, streaming, with images.

Starts the server in this process on the engine (or targets --url), then for each concurrency level sends
--requests streaming chat requests (each with --images generated scenes of the default model's kind as data URLs,
a question, --max-tokens) from that many client threads with the official `openai` client, and reports request
throughput, output tokens/s, time to first token (first content chunk) and per-output-token latency percentiles.
Rows go to benchmarks/results/serve.jsonl with the device, versions and commit.

    python benchmarks/bench_serve.py                          # the embedded default model on this machine
    python benchmarks/bench_serve.py --model /tmp/hovle-full/hovle --concurrency 1,8,64   # full size on a GPU
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import append_rows, provenance  # noqa: E402


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _images(n: int) -> list[str]:
    from hovle.default_model.scenes import random_scene, render

    return [_data_url(render(random_scene(10_000 + i))) for i in range(n)]


def _data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _one(client, model: str, images: list[str], question: str, max_tokens: int) -> dict:
    content = [{"type": "image_url", "image_url": {"url": u}} for u in images] + [{"type": "text", "text": question}]
    start = time.perf_counter()
    first = last = None
    usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )  # exactly max_tokens each
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
    tokens = usage.completion_tokens if usage else 0
    end = time.perf_counter()
    return {
        "ttft": (first or end) - start,
        "tpot": ((last or end) - (first or end)) / max(tokens - 1, 1),
        "tokens": tokens,
        "prompt": usage.prompt_tokens if usage else 0,
    }


def sweep(url: str, model: str, levels: list[int], requests: int, n_images: int, max_tokens: int) -> list[dict]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    pool_images = _images(max(8, n_images))
    questions = ["What colour is the house?", "How many trees are there?", "Describe the image in one sentence."]
    rows = []
    for level in levels:
        jobs = [
            ([pool_images[(i + j) % len(pool_images)] for j in range(n_images)], questions[i % len(questions)])
            for i in range(requests)
        ]
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(level) as pool:
            out = list(pool.map(lambda job: _one(client, model, job[0], job[1], max_tokens), jobs))
        wall = time.perf_counter() - start
        ttft, tpot = [o["ttft"] for o in out], [o["tpot"] for o in out if o["tokens"] > 1]
        rows.append(
            {
                "op": "serve",
                "concurrency": level,
                "requests": requests,
                "images_per_request": n_images,
                "req_per_s": requests / wall,
                "output_tok_per_s": sum(o["tokens"] for o in out) / wall,
                "mean_prompt_tokens": statistics.mean(o["prompt"] for o in out),
                "ttft_p50_ms": 1e3 * _percentile(ttft, 0.5),
                "ttft_p99_ms": 1e3 * _percentile(ttft, 0.99),
                "tpot_p50_ms": 1e3 * _percentile(tpot, 0.5),
                "tpot_p99_ms": 1e3 * _percentile(tpot, 0.99),
                "lost": sum(o["tokens"] == 0 for o in out),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="checkpoint folder (default: the embedded default model)")
    p.add_argument("--url", default=None, help="an already running server instead of one in this process")
    p.add_argument("--served-name", default="bench")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--record", action="store_true", help="append the rows to benchmarks/results/serve.jsonl")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.url:
        rows = sweep(args.url, args.served_name, levels, args.requests, args.images, args.max_tokens)
    else:
        from hovle import Engine
        from hovle.default_model.folder import ensure_default_model
        from hovle.serve.app import ServerConfig, background_server

        engine = Engine.from_pretrained(args.model or ensure_default_model("hovle"), max_batch=max(levels))
        with background_server(engine, ServerConfig(args.served_name)) as url:
            rows = sweep(url, args.served_name, levels, args.requests, args.images, args.max_tokens)
        model = args.model or "embedded default hovle"
        rows = [{**r, "model": model, "engine_device": str(engine.model.device)} for r in rows]
    prov = provenance()
    rows = [{**r, **prov} for r in rows]
    if args.record:
        append_rows(rows, "serve.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
