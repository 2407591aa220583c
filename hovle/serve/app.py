"""The OpenAI-compatible HTTP API on FastAPI: /v1/chat/completions (plain and SSE streaming), /v1/models,
/health, /metrics.

Every request goes to the engine's scheduler, which batches all requests continuously; the server only translates.
Image decoding and tiling run in a worker thread, off the event loop. Scheduler events reach the request's
coroutine through the loop (call_soon_threadsafe). A client that disconnects, mid-stream or while waiting,
cancels its sequence, which frees its pages and row at the next step. Errors use OpenAI's envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..engine import Engine
from ..errors import EngineClosed, HoVLEError, Overloaded
from ..generation import GenerationResult, SamplingParams
from ..handles import Handle
from ..runtime.output import Done, Failed, Token
from .metrics import EngineCollector
from .protocol import ApiError, ChatRequest, input_error, to_engine

UNBOUNDED = 10**9  # max_tokens unset: up to the context (the engine clamps the budget)


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    max_images: int = 8
    max_image_bytes: int = 20 << 20
    media_root: str | None = None

    @classmethod
    def from_args(cls, args, model_name: str) -> ServerConfig:
        return cls(
            model_name, args.api_key, args.max_images_per_request, args.max_image_bytes, args.allowed_local_media_path
        )


class _Events:
    """The scheduler's events for one request, handed to its coroutine through the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shut down): nobody is waiting any more
            pass


def build_app(engine: Engine, config: ServerConfig) -> FastAPI:
    app = FastAPI(title="hovle-engine", docs_url=None, redoc_url=None)
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine, config.model_name))

    @app.exception_handler(ApiError)
    async def api_error(_, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), kind).body(), status_code=exc.status_code)

    def authorize(request: Request) -> None:
        if config.api_key and request.headers.get("authorization") != f"Bearer {config.api_key}":
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        card = {
            "id": config.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "hovle-engine",
            "max_model_len": engine.max_context,
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        authorize(request)
        body = await _parse(request, config)
        handle, events = await _submit(engine, body, config)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": config.model_name}
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(_sse(handle, events, head, usage), media_type="text/event-stream")
        return await _complete(request, handle, events, head)

    return app


async def _parse(request: Request, config: ServerConfig) -> ChatRequest:
    try:
        body = ChatRequest.model_validate(json.loads(await request.body()))
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ApiError(400, problems) from None
    if body.model != config.model_name:
        raise ApiError(
            404,
            f"model {body.model!r} does not exist here; /v1/models lists {config.model_name!r}",
            "not_found_error",
            "model",
        )
    body.refuse_unsupported()
    return body


async def _submit(engine: Engine, body: ChatRequest, config: ServerConfig):
    def prepare():  # base64 decoding, file checks, tiling: in a worker thread, off the event loop
        messages, images = to_engine(body, config.max_images, config.max_image_bytes, config.media_root)
        return engine.prepare(messages, images, body.max_dynamic_patch)

    events = _Events(asyncio.get_running_loop())
    try:
        req = await run_in_threadpool(prepare)
        params = SamplingParams.build(**body.sampling(UNBOUNDED))
        [handle] = engine.submit([req], params, events, stream=body.stream)
    except (Overloaded, EngineClosed) as exc:
        raise ApiError(503, str(exc), "overloaded_error") from None
    except HoVLEError as exc:
        raise input_error(exc) from None
    return handle, events


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(result: GenerationResult) -> dict:
    prompt, completion = result.prompt_tokens, len(result.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _complete(request: Request, handle: Handle, events: _Events, head: dict):
    """Waits for the answer; a client that goes away meanwhile cancels its request."""
    while True:
        try:
            event = await asyncio.wait_for(events.queue.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                handle.cancel()
                return PlainTextResponse("", status_code=499)
            continue
        if isinstance(event, Failed):
            raise input_error(event.error)
        if isinstance(event, Done):
            result = handle.result()
            message = {"role": "assistant", "content": result.text}
            choice = {"index": 0, "message": message, "finish_reason": _finish(event.reason), "logprobs": None}
            return {**head, "object": "chat.completion", "choices": [choice], "usage": _usage(result)}


def _chunk(head: dict, delta: dict, finish: str | None = None, **extra) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': [choice], **extra})}\n\n"


async def _sse(handle: Handle, events: _Events, head: dict, include_usage: bool):
    """Server-sent events: the role, the text deltas, the finish reason, [usage], then [DONE]. Closing the
    connection early (the client left) cancels the request."""
    done = False
    try:
        yield _chunk(head, {"role": "assistant", "content": ""})
        while not done:
            event = await events.queue.get()
            if isinstance(event, Token) and event.text:
                yield _chunk(head, {"content": event.text})
            elif isinstance(event, Done):
                done = True
                yield _chunk(head, {}, _finish(event.reason))
                if include_usage:
                    body = {**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(handle.result())}
                    yield f"data: {json.dumps(body)}\n\n"
            elif isinstance(event, Failed):
                done = True
                yield f"data: {json.dumps(input_error(event.error).body())}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if not done:
            handle.cancel()


@contextlib.contextmanager
def background_server(engine: Engine, config: ServerConfig, host: str = "127.0.0.1", port: int = 0):
    """Serves in a thread of this process (tests, benchmarks); yields the base URL. port 0: a free port."""
    import socket
    import threading

    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(engine, config), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="hovle-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
