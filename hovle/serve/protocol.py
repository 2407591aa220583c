"""The OpenAI chat-completions request as pydantic models, and its translation into engine messages and images.

Validation is pydantic's (a malformed body or a known field of the wrong type is a 400); what the engine cannot do
(n > 1, logprobs, tools, frequency/presence penalties) is refused with a 400 naming the field, never ignored.
Unknown extra fields are accepted and ignored, as the OpenAI API does. Images: `data:` base64 URLs, and `file://`
URLs only inside the folder the server was started with (`--allowed-local-media-path`); nothing is fetched from
the network. Each image part becomes an image followed by a newline, in the order of the parts ("<image>\n", as the
InternVL-family chat templates write it; image first, then the question, gives exactly the prompt of the authors'
chat()). Text parts are plain text: a typed "<|im_end|>" or "<image>" stays those characters.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..prompt import ImageSlot


class ApiError(Exception):
    """An error answered in OpenAI's envelope: {"error": {"message", "type", "code", "param"}}."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status, "param": self.param}}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrl


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    tools: list | None = None
    max_dynamic_patch: int | None = Field(None, ge=1)  # extension: the per-image tile budget
    ignore_eos: bool = False  # extension (as vLLM's): generate through <|im_end|> up to max_tokens

    def refuse_unsupported(self) -> None:
        checks = [
            ("n", self.n != 1, "only n=1 is supported"),
            ("logprobs", bool(self.logprobs), "not supported"),
            ("tools", bool(self.tools), "tools are not supported"),
            ("frequency_penalty", bool(self.frequency_penalty), "not supported (use repetition_penalty)"),
            ("presence_penalty", bool(self.presence_penalty), "not supported (use repetition_penalty)"),
        ]
        for field, bad, why in checks:
            if bad:
                raise ApiError(400, f"{field}: {why}", param=field)

    def sampling(self, default_max_tokens: int) -> dict:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return dict(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            repetition_penalty=self.repetition_penalty or 1.0,
            seed=self.seed,
            stop=stop,
            ignore_eos=self.ignore_eos,
        )


def to_engine(body: ChatRequest, max_images: int, max_image_bytes: int, media_root: str | None):
    """(messages with ImageSlot parts, images as bytes or paths) in the order the image parts appear."""
    n_images = sum(isinstance(p, ImagePart) for m in body.messages if not isinstance(m.content, str) for p in m.content)
    if n_images > max_images:  # before any image is decoded
        raise ApiError(400, f"{n_images} images in one request; this server accepts at most {max_images}")
    messages, images = [], []
    for i, m in enumerate(body.messages):
        if isinstance(m.content, str):
            messages.append({"role": m.role, "content": m.content})
            continue
        parts = []
        for part in m.content:
            if isinstance(part, TextPart):
                parts.append(part.text)
                continue
            if m.role != "user":
                raise ApiError(400, f"messages[{i}]: images are only accepted in user messages", param="messages")
            images.append(_image_source(part.image_url.url, max_image_bytes, media_root))
            parts += [ImageSlot(len(images) - 1), "\n"]  # "<image>\n" per image part, as InternVL's templates
        messages.append({"role": m.role, "content": parts or [""]})
    return messages, images


def _image_source(url: str, max_bytes: int, media_root: str | None):
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header or not header[5:].split(";")[0].startswith("image/"):
            raise ApiError(400, "image_url: expected data:image/<type>;base64,<data>", param="image_url")
        if len(payload) * 3 // 4 > max_bytes:
            raise ApiError(400, f"image_url: the image is larger than {max_bytes} bytes", param="image_url")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, f"image_url: invalid base64 ({exc})", param="image_url") from None
    if url.startswith("file://"):
        return _local_file(url, max_bytes, media_root)
    raise ApiError(
        400,
        "image_url: only data: URLs (and file:// inside --allowed-local-media-path) are accepted; "
        "this server fetches nothing from the network",
        param="image_url",
    )


def _local_file(url: str, max_bytes: int, media_root: str | None) -> str:
    if media_root is None:
        raise ApiError(400, "image_url: file:// URLs need the server's --allowed-local-media-path", param="image_url")
    path = os.path.realpath(unquote(urlparse(url).path))
    root = os.path.realpath(media_root)
    if os.path.commonpath([path, root]) != root:
        raise ApiError(400, f"image_url: {path} is outside the allowed media folder", param="image_url")
    if not Path(path).is_file():
        raise ApiError(400, f"image_url: {path} is not a file", param="image_url")
    if os.path.getsize(path) > max_bytes:
        raise ApiError(400, f"image_url: {path} is larger than {max_bytes} bytes", param="image_url")
    return path


def input_error(exc: Exception) -> ApiError:
    """An engine error about the request (bad image, prompt too long, bad sampling value) as a 400."""
    if isinstance(exc, (InputError, ValueError)):
        return ApiError(400, str(exc))
    return ApiError(500, str(exc), "server_error")
