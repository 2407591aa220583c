"""Chat prompts: the internlm2-chat template (with its default system message), multi-turn history, and where the
images go.

A prompt is built as segments, never as one string to be re-split: text (message content and the template's own
words), `Special` control tokens that only the template inserts, and `ImageSlot`s where the API put an image. The
tokenizer (hovle/loaders/tokenizer.py) encodes text segments as literal characters, so a user who types
"<|im_end|><|im_start|>system" gets those characters, not a forged turn; each ImageSlot becomes <img> +
IMG_CONTEXT x (tokens per tile x tiles) + </img>. Adjacent text segments are encoded as one piece of text, so a
normal prompt gets exactly the ids the authors' tokenizer gives the template string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InputError, TokenizerError
from .loaders.tokenizer import IMAGE_PLACEHOLDER


@dataclass(frozen=True)
class Special:
    """A control token of the template, by its string (e.g. "<|im_start|>")."""

    token: str


@dataclass(frozen=True)
class ImageSlot:
    """The place of the image `index` (order of the request's images)."""

    index: int


Segment = str | Special | ImageSlot


@dataclass(frozen=True)
class ChatTemplate:
    """A conversation.py template in MPT style: system + sep, then role + message + sep per turn."""

    name: str
    start: str  # control token opening a turn
    sep: str  # control token closing a turn
    system_message: str
    roles: tuple[str, str, str]  # system, user, assistant: the text after `start`
    after_sep: str = ""  # text after each closed turn (XComposer2: a newline)

    def turn(self, role: str, content: list[Segment] | None) -> list[Segment]:
        """One turn's segments; content None leaves the turn open (the assistant's answer follows)."""
        head = [Special(self.start), self.roles[("system", "user", "assistant").index(role)]]
        if content is None:
            return head
        return head + content + [Special(self.sep)] + ([self.after_sep] if self.after_sep else [])


_TEMPLATES = {
    "internlm2-chat": ChatTemplate(
        name="internlm2-chat",
        start="<|im_start|>",
        sep="<|im_end|>",
        system_message="你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，"
        "英文名叫InternVL, 是一个有用无害的人工智能助手。",
        roles=("system\n", "user\n", "assistant\n"),
    ),
    "xcomposer2": ChatTemplate(  # InternLM-XComposer2's chat(): InternLM2's unused tokens 146 / 145 as im_start / end
        name="xcomposer2",
        start="[UNUSED_TOKEN_146]",
        sep="[UNUSED_TOKEN_145]",
        system_message="You are an AI assistant whose name is InternLM-XComposer (浦语·灵笔).\n"
        "- InternLM-XComposer (浦语·灵笔) is a multi-modality conversational language model that is developed by "
        "Shanghai AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
        "- InternLM-XComposer (浦语·灵笔) can understand and communicate fluently in the language chosen by the user "
        "such as English and 中文.\n"
        "- InternLM-XComposer (浦语·灵笔) is capable of comprehending and articulating responses effectively based on "
        "the provided image.",
        roles=("system\n", "user\n", "assistant\n"),
        after_sep="\n",
    ),
}


def get_template(name: str) -> ChatTemplate:
    if name not in _TEMPLATES:
        raise TokenizerError(f"unknown chat template {name!r}; supported: {', '.join(sorted(_TEMPLATES))}")
    return _TEMPLATES[name]


def build_prompt(template: ChatTemplate, messages: list[dict], system_message: str | None = None) -> list[Segment]:
    """Segments for alternating user/assistant `messages` (ending with user), left open for the assistant.

    Each message is {"role": "user"|"assistant", "content": segments}; content as placed by `place_images`
    (a list of str and ImageSlot). A leading {"role": "system"} message replaces the default system message.
    """
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list ending with a user turn")
    first = 0  # messages[i] in errors is the caller's own index, a leading system message included
    if isinstance(messages[0], dict) and messages[0].get("role") == "system":
        system_message, first = _system_text(messages[0]), 1
    if len(messages) == first:
        raise InputError("messages hold only a system message; a user turn must follow it")
    system = template.system_message if system_message is None else system_message
    out = template.turn("system", [system])
    for i in range(first, len(messages)):
        message, expected = messages[i], ("user", "assistant")[(i - first) % 2]
        if not isinstance(message, dict) or message.get("role") != expected:
            raise InputError(f"messages[{i}] must be {{'role': {expected!r}, ...}} (user first, then alternating)")
        out += template.turn(expected, _content(message.get("content"), i))
    if (len(messages) - first) % 2 == 0:
        raise InputError("messages must end with a user turn, but the last one is from the assistant")
    return out + template.turn("assistant", None)


def _content(content: Any, i: int) -> list[Segment]:
    parts = [content] if isinstance(content, str) else content
    ok = isinstance(parts, list) and parts and all(isinstance(p, (str, ImageSlot)) for p in parts)
    if not ok or not any(p for p in parts):
        raise InputError(f"messages[{i}] content must be a non-empty str, got {content!r}")
    return list(parts)


def _system_text(message: dict) -> str:
    content = message.get("content")
    parts = [content] if isinstance(content, str) else content
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise InputError(f"the system message's content must be text (no images), got {content!r}")
    return "".join(parts)


def place_images(messages: list[dict], n_images: int, after_image: str = "\n") -> list[dict]:
    """Where each image goes: the `<image>` placeholders of the text when the request has images (as many as
    images), else, as the authors' chat() does, one "<image>" + after_image per image in front of the first user
    message.
    Without images "<image>" is plain text. Content parts may also be ImageSlots already (the HTTP API's image
    parts); then the text is never searched for placeholders. Returns messages with content as segment lists."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
        raise InputError("messages must be a list of {'role': ..., 'content': ...} dicts")
    explicit = sum(isinstance(p, ImageSlot) for m in messages for p in _parts(m))
    if explicit:
        if explicit != n_images:
            raise InputError(f"the messages hold {explicit} image parts but {n_images} images were given")
        return [dict(m, content=_parts(m)) for m in messages]
    found = sum(p.count(IMAGE_PLACEHOLDER) for m in messages for p in _parts(m) if isinstance(p, str))
    if n_images == 0 or found not in (0, n_images):
        if n_images and found:
            raise InputError(f"the messages hold {found} <image> placeholders but {n_images} images were given")
        return [dict(m, content=_parts(m)) for m in messages]
    counter = iter(range(n_images))
    placed = [dict(m, content=_split_placeholders(_parts(m), counter)) for m in messages]
    if found:
        return placed
    first = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
    if first is None:
        raise InputError("messages need at least one user turn")
    front = [x for i in range(n_images) for x in ((ImageSlot(i), after_image) if after_image else (ImageSlot(i),))]
    return placed[:first] + [dict(placed[first], content=front + placed[first]["content"])] + placed[first + 1 :]


def _parts(message: dict) -> list:
    content = message["content"]
    return [content] if isinstance(content, str) else list(content) if isinstance(content, list) else [content]


def _split_placeholders(parts: list, counter) -> list:
    out = []
    for part in parts:
        if not isinstance(part, str):
            out.append(part)
            continue
        pieces = part.split(IMAGE_PLACEHOLDER)
        for j, piece in enumerate(pieces):
            if j:
                out.append(ImageSlot(next(counter)))
            if piece:
                out.append(piece)
    return out


def split_images(images: Any, single: bool, n: int) -> list[list]:
    if single:
        return [[] if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])]
    if images is None:
        return [[] for _ in range(n)]
    if not isinstance(images, (list, tuple)) or len(images) != n:
        raise InputError(f"with {n} prompts, images must be None or a list of {n} entries (None, an image or a list)")
    return [split_images(x, True, 1)[0] for x in images]


def render(segments: list[Segment], image_text: list[str]) -> str:
    """The prompt as one string (for display and for the raw-prompt path), image i written as image_text[i]."""
    return "".join(
        s if isinstance(s, str) else s.token if isinstance(s, Special) else image_text[s.index] for s in segments
    )
