"""Chat prompts: the internlm2-chat template (with its default system message), multi-turn history, and the
`<image>` placeholders expanded to `<img>` + IMG_CONTEXT x (tokens per tile x tiles) + `</img>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import InputError, TokenizerError
from engine.tokenizer import IMAGE_PLACEHOLDER, IMG_CONTEXT, IMG_END, IMG_START


@dataclass(frozen=True)
class ChatTemplate:
    """A conversation.py template in MPT style: system + sep, then role + message + sep per turn."""

    name: str
    system_template: str
    system_message: str
    user_role: str
    assistant_role: str
    sep: str


_TEMPLATES = {
    "internlm2-chat": ChatTemplate(
        name="internlm2-chat",
        system_template="<|im_start|>system\n{system_message}",
        system_message="你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，"
        "英文名叫InternVL, 是一个有用无害的人工智能助手。",
        user_role="<|im_start|>user\n",
        assistant_role="<|im_start|>assistant\n",
        sep="<|im_end|>",
    ),
}


def get_template(name: str) -> ChatTemplate:
    if name not in _TEMPLATES:
        raise TokenizerError(f"unknown chat template {name!r}; supported: {', '.join(sorted(_TEMPLATES))}")
    return _TEMPLATES[name]


def build_prompt(template: ChatTemplate, messages: list[dict], system_message: str | None = None) -> str:
    """Prompt text for alternating user/assistant `messages` (ending with user), left open for the assistant."""
    if not messages:
        raise InputError("messages is empty; it must end with a user turn")
    system = template.system_message if system_message is None else system_message
    out = [template.system_template.format(system_message=system), template.sep]
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(message, dict) or message.get("role") != expected:
            raise InputError(f"messages[{i}] must be {{'role': {expected!r}, ...}} (user first, then alternating)")
        content = message.get("content")
        if not isinstance(content, str) or not content:
            raise InputError(f"messages[{i}] content must be a non-empty str, got {content!r}")
        out += [template.user_role if expected == "user" else template.assistant_role, content, template.sep]
    if len(messages) % 2 == 0:
        raise InputError("messages must end with a user turn, but the last one is from the assistant")
    return "".join(out) + template.assistant_role


def ensure_image_placeholders(question: str, n_images: int) -> str:
    """chat() rule: with images and no "<image>" in the question, put one "<image>\\n" per image in front."""
    count = question.count(IMAGE_PLACEHOLDER)
    if n_images < 0:
        raise InputError(f"n_images must be >= 0, got {n_images}")
    if count == n_images:
        return question
    if count == 0:
        return (IMAGE_PLACEHOLDER + "\n") * n_images + question
    raise InputError(f"question has {count} '<image>' placeholders for {n_images} image(s); use 0 or {n_images}")


def expand_image_placeholders(prompt: str, tiles_per_image: list[int], tokens_per_tile: int) -> str:
    """Replace the i-th "<image>" with <img> + <IMG_CONTEXT> x (tokens_per_tile * tiles_per_image[i]) + </img>."""
    parts = prompt.split(IMAGE_PLACEHOLDER)
    if len(parts) - 1 != len(tiles_per_image):
        raise InputError(f"prompt has {len(parts) - 1} '<image>' placeholders for {len(tiles_per_image)} image(s)")
    if type(tokens_per_tile) is not int or tokens_per_tile <= 0:
        raise InputError(f"tokens_per_tile must be a positive int, got {tokens_per_tile!r}")
    out = [parts[0]]
    for i, (tiles, rest) in enumerate(zip(tiles_per_image, parts[1:], strict=True)):
        if type(tiles) is not int or tiles <= 0:
            raise InputError(f"tiles_per_image[{i}] must be a positive int, got {tiles!r}")
        out += [IMG_START, IMG_CONTEXT * (tokens_per_tile * tiles), IMG_END, rest]
    return "".join(out)


def split_images(images: Any, single: bool, n: int) -> list[list]:
    if single:
        return [[] if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])]
    if images is None:
        return [[] for _ in range(n)]
    if not isinstance(images, (list, tuple)) or len(images) != n:
        raise InputError(f"with {n} prompts, images must be None or a list of {n} entries (None, an image or a list)")
    return [split_images(x, True, 1)[0] for x in images]


def place_images(messages: list[dict], n_images: int) -> list[dict]:
    """Adds the `<image>` placeholders the authors' chat() adds when the text has none; checks the count."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
        raise InputError("messages must be a list of {'role': ..., 'content': ...} dicts")
    found = sum(str(m["content"]).count("<image>") for m in messages)
    if found == n_images:
        return messages
    if found:
        raise InputError(f"the messages hold {found} <image> placeholders but {n_images} images were given")
    first = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
    if first is None:
        raise InputError("messages need at least one user turn")
    placed = dict(messages[first], content=ensure_image_placeholders(messages[first]["content"], n_images))
    return messages[:first] + [placed] + messages[first + 1 :]
