"""Generated garbage at every input of the engine: each outcome is a normal result or the engine's own error.
Both generative families: HoVLE and InternLM-XComposer2-4KHD.

Prompts (any Unicode, lone surrogates, control-token strings, <image> markers), images (arrays and tensors of any
shape and dtype, random bytes, PIL images in any mode, other objects), sampling values of any type, and chat
message structures. A traceback of any other exception type is a bug; so is a hang (each call is small).
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hovle import GenerationResult, HoVLEError

SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
SPECIALS = ["<|im_end|>", "<|im_start|>", "<image>", "<img>", "</img>", "<IMG_CONTEXT>", "<s>", "</s>", "\n", " "]
SPECIALS += ["[UNUSED_TOKEN_146]", "[UNUSED_TOKEN_145]", "<ImageHere>"]  # XComposer2's template tokens

pieces = st.lists(st.sampled_from(SPECIALS) | st.text(max_size=5), max_size=8)
text = st.one_of(st.text(max_size=60), pieces.map("".join))
junk = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def images(draw):
    kind = draw(st.sampled_from(["array", "tensor", "bytes", "pil", "junk"]))
    if kind == "junk":
        return draw(junk)
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    shape = tuple(draw(st.lists(st.integers(0, 40), min_size=1, max_size=4)))
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.int64, np.bool_, np.uint16]))
    arr = (np.random.default_rng(draw(st.integers(0, 99))).random(shape) * 300).astype(dtype)
    if kind == "tensor":
        return torch.from_numpy(arr)
    if kind == "pil" and arr.ndim == 2 and arr.size:
        mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "I", "F", "1", "CMYK"]))
        return Image.new(mode, (arr.shape[1] or 1, arr.shape[0] or 1))
    return arr


sampling = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": st.one_of(st.integers(-2, 4), junk),
        "temperature": st.one_of(st.floats(-1, 3), junk),
        "top_k": st.one_of(st.integers(-2, 50), junk),
        "top_p": st.one_of(st.floats(-0.5, 1.5), junk),
        "repetition_penalty": st.one_of(st.floats(-1, 3), junk),
        "seed": st.one_of(st.integers(-5, 2**64), junk),
        "stop": st.one_of(text, st.lists(text, max_size=3), junk),
        "ignore_eos": st.one_of(st.booleans(), junk),
    },
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool"]) | junk,
        "content": st.one_of(text, st.lists(text | junk, max_size=3), junk),
    }
)


@pytest.fixture(scope="module", params=["hovle", "xcomposer"])
def engine(request, make_engine):
    if request.param == "hovle":
        yield make_engine("pre", max_context=600)  # closed with the module's other engines
        return
    from hovle import Engine

    # a small tile budget keeps each example's vision work short (the default hd_num is 25)
    eng = Engine.from_pretrained(request.getfixturevalue("xc_path"), device="cpu", dtype=torch.float32, max_tiles=4)
    yield eng
    eng.close()


def _bounded(kw: dict) -> dict:
    n = kw.get("max_new_tokens")
    if isinstance(n, int) and not isinstance(n, bool) and n > 4:
        kw["max_new_tokens"] = 4
    return kw


def _outcome(call):
    try:
        out = call()
    except HoVLEError:
        return "error"
    assert all(isinstance(r, GenerationResult) for r in (out if isinstance(out, list) else [out]))
    return "result"


@SETTINGS
@given(prompt=text, image_list=st.lists(images(), max_size=2), kw=sampling, max_num=st.one_of(st.none(), junk))
def test_generate_on_garbage(engine, prompt, image_list, kw, max_num):
    _outcome(lambda: engine.generate(prompt, image_list, max_num=max_num, **_bounded(kw)))


@SETTINGS
@given(messages=st.one_of(st.lists(message, max_size=4), junk), kw=sampling)
def test_chat_on_garbage(engine, messages, kw):
    _outcome(lambda: engine.chat(messages, **_bounded(kw)))


@SETTINGS
@given(prompts=st.one_of(st.lists(text | junk, max_size=3), junk), images_=st.one_of(junk, st.lists(junk, max_size=3)))
def test_batches_on_garbage(engine, prompts, images_):
    _outcome(lambda: engine.generate(prompts, images_, max_new_tokens=2))
