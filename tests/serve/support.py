"""A live server for the tests: uvicorn on 127.0.0.1 at a free port, in a thread of the test process."""

from __future__ import annotations

import base64
import io

from hovle.serve.app import ServerConfig, background_server


def running_server(engine, **config):
    return background_server(engine, ServerConfig(config.pop("model_name", "hovle-test"), **config))


def data_url(image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()
